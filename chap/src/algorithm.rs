//! CHAP digest algorithms (IANA "PPP Authentication Algorithms" numbers) and
//! the response computation of RFC 1994 section 4.1.

use std::fmt;

use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use sha3::Sha3_256;

use crate::secret::Secret;

/// A CHAP digest algorithm, numbered as IANA assigns the CHAP_A values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// CHAP with MD5 (CHAP_A=5).
    Md5,
    /// CHAP with SHA-1 (CHAP_A=6).
    Sha1,
    /// CHAP with SHA-256 (CHAP_A=7).
    Sha256,
    /// CHAP with SHA3-256 (CHAP_A=8).
    Sha3_256,
}

impl Algorithm {
    /// All algorithms, strongest first: the default preference order.
    pub const ALL: [Algorithm; 4] = [
        Algorithm::Sha3_256,
        Algorithm::Sha256,
        Algorithm::Sha1,
        Algorithm::Md5,
    ];

    /// The CHAP_A number.
    pub fn code(self) -> u32 {
        match self {
            Algorithm::Md5 => 5,
            Algorithm::Sha1 => 6,
            Algorithm::Sha256 => 7,
            Algorithm::Sha3_256 => 8,
        }
    }

    /// The algorithm for a CHAP_A number, if we implement it.
    pub fn from_code(code: u32) -> Option<Algorithm> {
        match code {
            5 => Some(Algorithm::Md5),
            6 => Some(Algorithm::Sha1),
            7 => Some(Algorithm::Sha256),
            8 => Some(Algorithm::Sha3_256),
            _ => None,
        }
    }

    /// The algorithm for a configuration name: `md5`, `sha1`, `sha256`
    /// (or `sha-256`), `sha3-256` (or `sha3_256`), case-insensitive.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        match name.to_ascii_lowercase().as_str() {
            "md5" => Some(Algorithm::Md5),
            "sha1" | "sha-1" => Some(Algorithm::Sha1),
            "sha256" | "sha-256" => Some(Algorithm::Sha256),
            "sha3-256" | "sha3_256" | "sha3256" => Some(Algorithm::Sha3_256),
            _ => None,
        }
    }

    /// Length of the digest, which is also the length of CHAP_R.
    pub fn digest_len(self) -> usize {
        match self {
            Algorithm::Md5 => 16,
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 | Algorithm::Sha3_256 => 32,
        }
    }

    /// The CHAP response: `H(identifier || secret || challenge)`.
    pub fn response(self, identifier: u8, secret: &Secret, challenge: &[u8]) -> Vec<u8> {
        fn run<D: Digest>(id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
            let mut d = D::new();
            d.update([id]);
            d.update(secret);
            d.update(challenge);
            d.finalize().to_vec()
        }
        let s = secret.expose();
        match self {
            Algorithm::Md5 => run::<Md5>(identifier, s, challenge),
            Algorithm::Sha1 => run::<Sha1>(identifier, s, challenge),
            Algorithm::Sha256 => run::<Sha256>(identifier, s, challenge),
            Algorithm::Sha3_256 => run::<Sha3_256>(identifier, s, challenge),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha1 => "SHA-1",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha3_256 => "SHA3-256",
        })
    }
}

/// An ordered list of permitted algorithms.
///
/// On the target it is the allow-list (its order does not matter there: the
/// target takes the first algorithm of the *initiator's* list that is allowed).
/// On the initiator it is the offer, in preference order.
///
/// In a configuration file it is a list of names, e.g.
/// `chap_algorithms = ["sha3-256", "sha256"]` (see [`Algorithm::from_name`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct AlgorithmList(Vec<Algorithm>);

impl TryFrom<Vec<String>> for AlgorithmList {
    type Error = crate::ChapError;
    fn try_from(names: Vec<String>) -> crate::Result<Self> {
        Self::from_names(&names)
    }
}

impl AlgorithmList {
    /// A list from the given algorithms, duplicates removed (first kept).
    /// Fails if it is empty.
    pub fn new(algs: impl IntoIterator<Item = Algorithm>) -> crate::Result<Self> {
        let mut v = Vec::new();
        for a in algs {
            if !v.contains(&a) {
                v.push(a);
            }
        }
        if v.is_empty() {
            return Err(crate::ChapError::Config(
                "the CHAP algorithm list is empty".into(),
            ));
        }
        Ok(AlgorithmList(v))
    }

    /// Parse configuration names such as `["sha256", "md5"]`.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> crate::Result<Self> {
        let algs = names
            .iter()
            .map(|n| {
                Algorithm::from_name(n.as_ref()).ok_or_else(|| {
                    crate::ChapError::Config(format!(
                        "unknown CHAP algorithm {:?} (use md5, sha1, sha256, sha3-256)",
                        n.as_ref()
                    ))
                })
            })
            .collect::<crate::Result<Vec<_>>>()?;
        Self::new(algs)
    }

    /// Whether `alg` is in the list.
    pub fn contains(&self, alg: Algorithm) -> bool {
        self.0.contains(&alg)
    }

    /// The algorithms, in order.
    pub fn as_slice(&self) -> &[Algorithm] {
        &self.0
    }
}

impl Default for AlgorithmList {
    /// All four algorithms, strongest first.
    fn default() -> Self {
        AlgorithmList(Algorithm::ALL.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_round_trip() {
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::from_code(a.code()), Some(a));
            assert_eq!(Algorithm::from_name(&a.to_string()), Some(a));
        }
        assert_eq!(Algorithm::from_code(4), None);
        assert_eq!(Algorithm::from_name("sha512"), None);
    }

    #[test]
    fn lists_from_configuration() {
        #[derive(serde::Deserialize)]
        struct Cfg {
            algs: AlgorithmList,
        }
        let c: Cfg = toml::from_str(r#"algs = ["SHA3-256", "md5", "sha3_256"]"#).expect("parses");
        assert_eq!(c.algs.as_slice(), &[Algorithm::Sha3_256, Algorithm::Md5]);
        let err = toml::from_str::<Cfg>(r#"algs = ["sha512"]"#)
            .err()
            .expect("unknown name");
        assert!(err.to_string().contains("unknown CHAP algorithm"), "{err}");
        assert!(
            toml::from_str::<Cfg>("algs = []").is_err(),
            "empty list refused"
        );
    }
}
