//! How many distinct values a stream holds, in bounded memory: a
//! HyperLogLog of 4 096 registers (its standard error 1.04/√4096, about
//! 1.6 %), kept sparse (a list of the registers set) while that is smaller,
//! and exact below that while few values have come.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Registers: 2^PRECISION.
const PRECISION: u32 = 12;
const REGISTERS: usize = 1 << PRECISION;
/// Past this many registers set, the sparse list turns dense.
const SPARSE_MAX: usize = REGISTERS / 4;

/// The standard error of an estimate.
pub const ERROR: f64 = 0.01625;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Distinct {
    /// Registers set, by index, while few are: (index, rank), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    sparse: Vec<(u16, u8)>,
    /// Every register, once many are set, as hex (two digits a register).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "dense")]
    dense: Option<Vec<u8>>,
}

impl Distinct {
    pub fn add(&mut self, value: &[u8]) {
        let digest = Sha256::digest(value);
        let hash = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes of a 32-byte digest"));
        let index = (hash >> (64 - PRECISION)) as u16;
        // The rank: leading zeros of the rest, plus one.
        let rank = ((hash << PRECISION) | (1 << (PRECISION - 1))).leading_zeros() as u8 + 1;
        if let Some(dense) = &mut self.dense {
            let register = &mut dense[usize::from(index)];
            *register = (*register).max(rank);
            return;
        }
        match self.sparse.binary_search_by_key(&index, |(i, _)| *i) {
            Ok(at) => self.sparse[at].1 = self.sparse[at].1.max(rank),
            Err(at) => self.sparse.insert(at, (index, rank)),
        }
        if self.sparse.len() > SPARSE_MAX {
            let mut dense = vec![0u8; REGISTERS];
            for (index, rank) in self.sparse.drain(..) {
                dense[usize::from(index)] = rank;
            }
            self.dense = Some(dense);
        }
    }

    /// The estimated number of distinct values added.
    pub fn estimate(&self) -> f64 {
        let m = REGISTERS as f64;
        let (sum, zeros) = match &self.dense {
            Some(dense) => dense.iter().fold((0.0, 0usize), |(sum, zeros), &rank| (sum + 2f64.powi(-i32::from(rank)), zeros + usize::from(rank == 0))),
            None => {
                let set: f64 = self.sparse.iter().map(|(_, rank)| 2f64.powi(-i32::from(*rank))).sum();
                (set + (REGISTERS - self.sparse.len()) as f64, REGISTERS - self.sparse.len())
            }
        };
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let raw = alpha * m * m / sum;
        if raw <= 2.5 * m && zeros > 0 {
            // Few values: linear counting is the better estimate.
            m * (m / zeros as f64).ln()
        } else {
            raw
        }
    }
}

mod dense {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(dense: &Option<Vec<u8>>, serializer: S) -> Result<S::Ok, S::Error> {
        match dense {
            Some(bytes) => serializer.serialize_str(&crate::hex(bytes)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<u8>>, D::Error> {
        let Some(text) = Option::<String>::deserialize(deserializer)? else { return Ok(None) };
        if text.len() != 2 * super::REGISTERS {
            return Err(serde::de::Error::custom(format!("{} hex digits of registers, not {}", text.len(), 2 * super::REGISTERS)));
        }
        let bytes = (0..text.len()).step_by(2).map(|at| u8::from_str_radix(&text[at..at + 2], 16)).collect::<Result<Vec<u8>, _>>();
        bytes.map(Some).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::{Distinct, ERROR};

    fn counted(n: usize) -> Distinct {
        let mut distinct = Distinct::default();
        for i in 0..n {
            distinct.add(format!("project-{i}").as_bytes());
            // Repeats change nothing.
            distinct.add(format!("project-{}", i / 2).as_bytes());
        }
        distinct
    }

    #[test]
    fn estimates_are_within_three_standard_errors_small_and_large() {
        for n in [0usize, 1, 10, 300, 1_000, 5_000, 100_000] {
            let estimate = counted(n).estimate();
            let allowed = (3.0 * ERROR * n as f64).max(1.0);
            assert!((estimate - n as f64).abs() <= allowed, "{n}: {estimate}");
        }
    }

    #[test]
    fn it_reads_back_the_same_sparse_and_dense() {
        for n in [10, 5_000] {
            let distinct = counted(n);
            let text = serde_json::to_string(&distinct).unwrap();
            assert_eq!(serde_json::from_str::<Distinct>(&text).unwrap(), distinct);
        }
        assert!(serde_json::to_string(&counted(10)).unwrap().len() < 200, "few values keep a short list");
        assert!(serde_json::from_str::<Distinct>(r#"{"dense":"00"}"#).is_err());
    }
}
