//! A problem found in a pipeline file, and how it is shown: file, line and
//! column, what is wrong, and the line itself.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One thing wrong with a pipeline file.
#[derive(Debug, Clone)]
pub struct Problem {
    /// Byte range in the file the problem is about, when it is about a place.
    pub span: Option<Range<usize>>,
    pub message: String,
    /// The line holds a secret (a password in a URL): it is not shown.
    pub secret: bool,
}

impl Problem {
    pub fn at(span: Range<usize>, message: impl Into<String>) -> Self {
        Self { span: Some(span), message: message.into(), secret: false }
    }

    /// A problem about the file as a whole.
    pub fn whole(message: impl Into<String>) -> Self {
        Self { span: None, message: message.into(), secret: false }
    }
}

/// Every problem found in one file, ready to print.
#[derive(Debug)]
pub struct Problems {
    pub path: PathBuf,
    pub source: String,
    pub problems: Vec<Problem>,
}

impl Problems {
    /// The problems of one file, in the order of the lines they are on.
    pub fn new(path: &Path, source: &str, mut problems: Vec<Problem>) -> Self {
        problems.sort_by_key(|p| p.span.as_ref().map_or(0, |s| s.start));
        Self { path: path.to_path_buf(), source: source.to_string(), problems }
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        for problem in &self.problems {
            match &problem.span {
                Some(span) => {
                    let (line, column) = line_and_column(&self.source, span.start);
                    writeln!(f, "{path}:{line}:{column}: {}", problem.message)?;
                    let text = self.source.lines().nth(line - 1).unwrap_or_default();
                    if problem.secret {
                        writeln!(f, "{line:>5} | (not shown: it holds a secret)")?;
                    } else {
                        writeln!(f, "{line:>5} | {}", text.trim_end())?;
                    }
                }
                None => writeln!(f, "{path}: {}", problem.message)?,
            }
        }
        let count = self.problems.len();
        write!(f, "{count} problem{} in {path}", if count == 1 { "" } else { "s" })
    }
}

impl std::error::Error for Problems {}

/// 1-based line and column of a byte offset.
fn line_and_column(source: &str, offset: usize) -> (usize, usize) {
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}
