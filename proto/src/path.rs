//! [`GfsPath`]: a path validated once, at the wire boundary.
//!
//! Rules (DESIGN.md): absolute, `/`-separated UTF-8; no empty, `.` or `..`
//! component (so no `//` and no trailing `/`, except the root `/` itself);
//! no NUL; each component at most 255 bytes; the whole at most 4096 bytes.

use std::fmt;

use serde::{Deserialize, Serialize};

pub const MAX_PATH_BYTES: usize = 4096;
pub const MAX_COMPONENT_BYTES: usize = 255;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is not valid UTF-8")]
    NotUtf8,
    #[error("path {0:?} is not absolute")]
    NotAbsolute(String),
    #[error("path {0:?} has an empty component")]
    EmptyComponent(String),
    #[error("path {0:?} has a '.' or '..' component")]
    DotComponent(String),
    #[error("path contains a NUL byte")]
    Nul,
    #[error("path has a component of {0} bytes (at most 255)")]
    ComponentTooLong(usize),
    #[error("path has {0} bytes (at most 4096)")]
    TooLong(usize),
}

/// A valid absolute path. Cheap to compare; ordered bytewise, so a
/// directory sorts right before everything below it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GfsPath(String);

impl GfsPath {
    pub fn root() -> Self {
        GfsPath("/".into())
    }

    pub fn parse(s: &str) -> Result<Self, PathError> {
        if s.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong(s.len()));
        }
        if s.contains('\0') {
            return Err(PathError::Nul);
        }
        let Some(rest) = s.strip_prefix('/') else {
            return Err(PathError::NotAbsolute(s.into()));
        };
        if rest.is_empty() {
            return Ok(Self::root());
        }
        for c in rest.split('/') {
            match c {
                "" => return Err(PathError::EmptyComponent(s.into())),
                "." | ".." => return Err(PathError::DotComponent(s.into())),
                c if c.len() > MAX_COMPONENT_BYTES => {
                    return Err(PathError::ComponentTooLong(c.len()));
                }
                _ => {}
            }
        }
        Ok(GfsPath(s.into()))
    }

    /// Validates raw bytes from the wire (which may not be UTF-8).
    pub fn from_bytes(b: &[u8]) -> Result<Self, PathError> {
        Self::parse(std::str::from_utf8(b).map_err(|_| PathError::NotUtf8)?)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// The parent directory; `None` for the root.
    pub fn parent(&self) -> Option<GfsPath> {
        if self.is_root() {
            return None;
        }
        let cut = self.0.rfind('/').expect("absolute paths contain '/'");
        Some(if cut == 0 {
            Self::root()
        } else {
            GfsPath(self.0[..cut].into())
        })
    }

    /// The last component; empty for the root.
    pub fn name(&self) -> &str {
        &self.0[self.0.rfind('/').expect("absolute paths contain '/'") + 1..]
    }

    /// Every ancestor from the root down, excluding `self`.
    pub fn ancestors(&self) -> Vec<GfsPath> {
        let mut out = Vec::new();
        let mut p = self.parent();
        while let Some(a) = p {
            p = a.parent();
            out.push(a);
        }
        out.reverse();
        out
    }

    /// `self` joined with one more component (validated).
    pub fn join(&self, name: &str) -> Result<GfsPath, PathError> {
        if self.is_root() {
            Self::parse(&format!("/{name}"))
        } else {
            Self::parse(&format!("{}/{name}", self.0))
        }
    }

    /// True if `other` lies strictly below `self`.
    pub fn is_ancestor_of(&self, other: &GfsPath) -> bool {
        if self.is_root() {
            return !other.is_root();
        }
        other.0.len() > self.0.len()
            && other.0.starts_with(&self.0)
            && other.0.as_bytes()[self.0.len()] == b'/'
    }

    /// The prefix every path strictly below `self` starts with.
    pub fn child_prefix(&self) -> String {
        if self.is_root() {
            "/".into()
        } else {
            format!("{}/", self.0)
        }
    }

    /// Replaces the ancestor `from` (or `self` itself) by `to`.
    pub fn rebase(&self, from: &GfsPath, to: &GfsPath) -> Option<GfsPath> {
        if self == from {
            return Some(to.clone());
        }
        if !from.is_ancestor_of(self) {
            return None;
        }
        let rest = &self.0[from.child_prefix().len()..];
        Some(GfsPath(format!("{}{rest}", to.child_prefix())))
    }
}

impl fmt::Display for GfsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for GfsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl TryFrom<String> for GfsPath {
    type Error = PathError;
    fn try_from(s: String) -> Result<Self, PathError> {
        GfsPath::parse(&s)
    }
}

impl From<GfsPath> for String {
    fn from(p: GfsPath) -> String {
        p.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> GfsPath {
        GfsPath::parse(s).expect("valid path")
    }

    #[test]
    fn valid_paths_parse() {
        for s in [
            "/",
            "/a",
            "/a/b.c",
            "/logs/2026-11-22/part-00001",
            "/ünï/çødé",
        ] {
            assert_eq!(p(s).as_str(), s);
        }
        let longest = format!("/{}", "x".repeat(255));
        assert!(GfsPath::parse(&longest).is_ok());
    }

    #[test]
    fn every_rule_has_its_own_error() {
        let e = |s: &str| GfsPath::parse(s).expect_err(s);
        assert_eq!(e("a/b"), PathError::NotAbsolute("a/b".into()));
        assert_eq!(e(""), PathError::NotAbsolute("".into()));
        assert_eq!(e("//a"), PathError::EmptyComponent("//a".into()));
        assert_eq!(e("/a//b"), PathError::EmptyComponent("/a//b".into()));
        assert_eq!(e("/a/"), PathError::EmptyComponent("/a/".into()));
        assert_eq!(e("/a/./b"), PathError::DotComponent("/a/./b".into()));
        assert_eq!(e("/a/.."), PathError::DotComponent("/a/..".into()));
        assert_eq!(e("/a\0b"), PathError::Nul);
        assert_eq!(
            e(&format!("/{}", "x".repeat(256))),
            PathError::ComponentTooLong(256)
        );
        let long = "/abcdefg".repeat(600);
        assert_eq!(e(&long), PathError::TooLong(4800));
        assert_eq!(GfsPath::from_bytes(b"/a\xff"), Err(PathError::NotUtf8));
    }

    #[test]
    fn relations() {
        assert_eq!(p("/a/b/c").parent(), Some(p("/a/b")));
        assert_eq!(p("/a").parent(), Some(p("/")));
        assert_eq!(p("/").parent(), None);
        assert_eq!(p("/a/b").name(), "b");
        assert_eq!(p("/a/b/c").ancestors(), vec![p("/"), p("/a"), p("/a/b")]);
        assert!(p("/a").is_ancestor_of(&p("/a/b")));
        assert!(!p("/a").is_ancestor_of(&p("/ab")));
        assert!(!p("/a").is_ancestor_of(&p("/a")));
        assert!(p("/").is_ancestor_of(&p("/a")));
        assert_eq!(
            p("/a/b/c").rebase(&p("/a"), &p("/x/y")),
            Some(p("/x/y/b/c"))
        );
        assert_eq!(p("/a").rebase(&p("/a"), &p("/z")), Some(p("/z")));
        assert_eq!(p("/ab").rebase(&p("/a"), &p("/z")), None);
        assert_eq!(p("/").join("a"), Ok(p("/a")));
        assert!(p("/a").join("..").is_err());
    }
}
