//! [`PathTable`]: the namespace's lookup table from full path to metadata,
//! prefix-compressed (a radix tree over the path bytes), not a tree of
//! directory objects. Paths sharing a prefix share its bytes; listing a
//! directory is a prefix scan that prunes everything below its children.

use std::ops::ControlFlow;

#[derive(Debug, Clone)]
struct Node<V> {
    /// Bytes on the edge from the parent.
    label: Box<[u8]>,
    value: Option<V>,
    /// Sorted by first label byte, which is distinct among siblings.
    children: Vec<Node<V>>,
}

#[derive(Debug, Clone)]
pub struct PathTable<V> {
    root: Node<V>,
    len: usize,
}

impl<V> Default for PathTable<V> {
    fn default() -> Self {
        Self {
            root: Node {
                label: Box::new([]),
                value: None,
                children: Vec::new(),
            },
            len: 0,
        }
    }
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl<V> Node<V> {
    fn child(&self, byte: u8) -> Result<usize, usize> {
        self.children.binary_search_by_key(&byte, |c| c.label[0])
    }

    fn insert(&mut self, rest: &[u8], value: V) -> Option<V> {
        if rest.is_empty() {
            return self.value.replace(value);
        }
        match self.child(rest[0]) {
            Err(i) => {
                let leaf = Node {
                    label: rest.into(),
                    value: Some(value),
                    children: Vec::new(),
                };
                self.children.insert(i, leaf);
                None
            }
            Ok(i) => {
                let c = &mut self.children[i];
                let n = common_prefix(&c.label, rest);
                if n < c.label.len() {
                    // Split the edge: a new node holds the shared bytes.
                    let tail: Box<[u8]> = c.label[n..].into();
                    let head: Box<[u8]> = c.label[..n].into();
                    let mut old = std::mem::replace(
                        c,
                        Node {
                            label: head,
                            value: None,
                            children: Vec::new(),
                        },
                    );
                    old.label = tail;
                    c.children.push(old);
                }
                c.insert(&rest[n..], value)
            }
        }
    }

    fn get(&self, rest: &[u8]) -> Option<&V> {
        if rest.is_empty() {
            return self.value.as_ref();
        }
        let c = &self.children[self.child(rest[0]).ok()?];
        rest.strip_prefix(&*c.label).and_then(|r| c.get(r))
    }

    fn get_mut(&mut self, rest: &[u8]) -> Option<&mut V> {
        if rest.is_empty() {
            return self.value.as_mut();
        }
        let i = self.child(rest[0]).ok()?;
        let c = &mut self.children[i];
        let r = rest.strip_prefix(&*c.label)?;
        c.get_mut(r)
    }

    fn remove(&mut self, rest: &[u8]) -> Option<V> {
        if rest.is_empty() {
            return self.value.take();
        }
        let i = self.child(rest[0]).ok()?;
        let c = &mut self.children[i];
        let r = rest.strip_prefix(&*c.label)?;
        let removed = c.remove(r)?;
        // Keep the tree compact: drop empty leaves, merge single-child chains.
        if c.value.is_none() {
            match c.children.len() {
                0 => {
                    self.children.remove(i);
                }
                1 => {
                    let only = c.children.pop().expect("one child");
                    let mut label = c.label.to_vec();
                    label.extend_from_slice(&only.label);
                    *c = Node {
                        label: label.into(),
                        ..only
                    };
                }
                _ => {}
            }
        }
        Some(removed)
    }

    /// Visits keys in order. `key` holds the bytes down to this node.
    fn scan<'a>(
        &'a self,
        key: &mut Vec<u8>,
        q: &Query<'_>,
        f: &mut dyn FnMut(&[u8], &'a V) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let base = key.len();
        key.extend_from_slice(&self.label);
        let result = self.scan_here(key, q, f);
        key.truncate(base);
        result
    }

    fn scan_here<'a>(
        &'a self,
        key: &mut Vec<u8>,
        q: &Query<'_>,
        f: &mut dyn FnMut(&[u8], &'a V) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        // Outside the prefix, or wholly before the resume point: skip.
        let n = key.len().min(q.prefix.len());
        if key[..n] != q.prefix[..n] {
            return ControlFlow::Continue(());
        }
        if let Some(after) = q.after {
            let m = common_prefix(key, after);
            // Below `after` only if the first differing byte is smaller.
            if m < key.len() && m < after.len() && key[m] < after[m] {
                return ControlFlow::Continue(());
            }
        }
        // Listing one level: nothing below a '/' past the prefix matters.
        let below = key.len() > q.prefix.len() && q.one_level;
        if below && key[q.prefix.len()..].contains(&b'/') {
            return ControlFlow::Continue(());
        }
        if let Some(v) = &self.value
            && key.len() >= q.prefix.len()
            && q.after.is_none_or(|a| key.as_slice() > a)
        {
            f(key, v)?;
        }
        for c in &self.children {
            c.scan(key, q, f)?;
        }
        ControlFlow::Continue(())
    }
}

struct Query<'q> {
    prefix: &'q [u8],
    after: Option<&'q [u8]>,
    one_level: bool,
}

impl<V> PathTable<V> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn insert(&mut self, key: &[u8], value: V) -> Option<V> {
        let old = self.root.insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn get(&self, key: &[u8]) -> Option<&V> {
        self.root.get(key)
    }

    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut V> {
        self.root.get_mut(key)
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    pub fn remove(&mut self, key: &[u8]) -> Option<V> {
        let old = self.root.remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Calls `f` on every key starting with `prefix` and greater than
    /// `after`, in byte order, until it breaks. With `one_level`, keys
    /// holding a '/' after the prefix are skipped, and so are their
    /// subtrees: the scan costs what it returns, not what lies below.
    pub fn scan<'a>(
        &'a self,
        prefix: &[u8],
        after: Option<&[u8]>,
        one_level: bool,
        mut f: impl FnMut(&[u8], &'a V) -> ControlFlow<()>,
    ) {
        let q = Query {
            prefix,
            after,
            one_level,
        };
        let _ = self.root.scan(&mut Vec::new(), &q, &mut f);
    }

    /// Every key starting with `prefix`, with its value, in order.
    pub fn collect_prefix(&self, prefix: &[u8]) -> Vec<(Vec<u8>, &V)> {
        let mut out = Vec::new();
        self.scan(prefix, None, false, |k, v| {
            out.push((k.to_vec(), v));
            ControlFlow::Continue(())
        });
        out
    }

    /// Number of nodes, for memory accounting.
    pub fn nodes(&self) -> usize {
        fn count<V>(n: &Node<V>) -> usize {
            1 + n.children.iter().map(count).sum::<usize>()
        }
        count(&self.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(t: &PathTable<u32>, prefix: &str, after: Option<&str>, one_level: bool) -> Vec<String> {
        let mut out = Vec::new();
        t.scan(
            prefix.as_bytes(),
            after.map(str::as_bytes),
            one_level,
            |k, _| {
                out.push(String::from_utf8(k.to_vec()).expect("utf-8"));
                ControlFlow::Continue(())
            },
        );
        out
    }

    fn table(paths: &[&str]) -> PathTable<u32> {
        let mut t = PathTable::default();
        for (i, p) in paths.iter().enumerate() {
            assert_eq!(t.insert(p.as_bytes(), i as u32), None);
        }
        t
    }

    #[test]
    fn insert_get_remove_keep_the_tree_compact() {
        let mut t = table(&["/logs/a", "/logs/ab", "/logs/b", "/l", "/"]);
        assert_eq!(t.len(), 5);
        assert_eq!(t.get(b"/logs/ab"), Some(&1));
        assert_eq!(t.get(b"/logs"), None);
        assert_eq!(t.get(b"/logs/abc"), None);
        assert_eq!(t.insert(b"/logs/a", 9), Some(0));
        assert_eq!(t.remove(b"/logs/a"), Some(9));
        assert_eq!(t.remove(b"/logs/a"), None);
        assert_eq!(t.len(), 4);
        assert_eq!(t.get(b"/logs/ab"), Some(&1));
        for k in ["/logs/ab", "/logs/b", "/l", "/"] {
            t.remove(k.as_bytes()).expect("present");
        }
        assert!(t.is_empty());
        assert_eq!(t.nodes(), 1, "only the root is left");
    }

    #[test]
    fn shared_prefixes_are_stored_once() {
        let paths: Vec<String> = (0..1000)
            .map(|i| format!("/logs/2026-11-22/part-{i:05}"))
            .collect();
        let mut t = PathTable::default();
        for (i, p) in paths.iter().enumerate() {
            t.insert(p.as_bytes(), i as u32);
        }
        // 1000 leaves plus a handful of branch nodes, not one node per byte.
        assert!(t.nodes() < 1200, "{} nodes", t.nodes());
    }

    #[test]
    fn scans_are_ordered_and_respect_prefix_resume_point_and_level() {
        let t = table(&[
            "/a",
            "/a/x",
            "/a/x/deep/er",
            "/a/y",
            "/a/y/z",
            "/ab",
            "/b",
            "/",
        ]);
        assert_eq!(
            keys(&t, "/a/", None, false),
            ["/a/x", "/a/x/deep/er", "/a/y", "/a/y/z"]
        );
        assert_eq!(keys(&t, "/a/", None, true), ["/a/x", "/a/y"]);
        assert_eq!(keys(&t, "/a/", Some("/a/x"), true), ["/a/y"]);
        assert_eq!(keys(&t, "/", None, true), ["/", "/a", "/ab", "/b"]);
        assert_eq!(keys(&t, "/", Some("/a"), true), ["/ab", "/b"]);
        assert_eq!(keys(&t, "/zz/", None, true), Vec::<String>::new());
        let mut first_two = Vec::new();
        t.scan(b"/", None, false, |k, _| {
            first_two.push(k.to_vec());
            if first_two.len() == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!(first_two, [b"/".to_vec(), b"/a".to_vec()]);
    }
}
