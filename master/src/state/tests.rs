//! The state machine, fed one request at a time, checked by exact replies.

use super::*;

const MIB: u64 = 1 << 20;

fn p(s: &str) -> GfsPath {
    GfsPath::parse(s).expect("valid path")
}

struct Sim {
    st: MasterState,
    now: u64,
    seq: u64,
}

impl Sim {
    fn new() -> Self {
        Self {
            st: MasterState::new(MIB),
            now: 1_000,
            seq: 0,
        }
    }

    /// Applies `cmd` as a fresh request of client 7.
    fn run(&mut self, cmd: Command) -> Outcome {
        self.seq += 1;
        self.st.apply(Request {
            client: 7,
            seq: self.seq,
            now_ms: self.now,
            cmd,
        })
    }

    /// A state holding file /f with one chunk (handle 1).
    fn with_one_chunk() -> (Self, ChunkHandle) {
        let mut s = Self::new();
        s.run(create("/f")).expect("create");
        s.run(Command::AddChunk {
            path: p("/f"),
            index: 0,
            replicas: vec![],
        })
        .expect("chunk");
        (s, ChunkHandle(1))
    }

    fn names(&self, dir: &str) -> Vec<String> {
        let page = self.st.list(&p(dir), None, 1000).expect("list");
        page.entries.into_iter().map(|e| e.name).collect()
    }
}

fn mkdir(path: &str, parents: bool) -> Command {
    Command::Mkdir {
        path: p(path),
        parents,
    }
}

fn create(path: &str) -> Command {
    Command::Create {
        path: p(path),
        replication: 3,
    }
}

#[test]
fn mkdir_with_and_without_parents() {
    let mut s = Sim::new();
    assert_eq!(
        s.run(mkdir("/a/b", false)),
        Err(MetaError::NotFound(p("/a")))
    );
    assert_eq!(s.run(mkdir("/a/b/c", true)), Ok(Reply::Done));
    assert_eq!(s.names("/a/b"), ["c"]);
    assert_eq!(
        s.run(mkdir("/a/b", false)),
        Err(MetaError::AlreadyExists(p("/a/b")))
    );
    assert_eq!(
        s.run(mkdir("/a/b", true)),
        Ok(Reply::Done),
        "-p accepts an existing dir"
    );
    assert_eq!(s.run(create("/a/f")), Ok(Reply::Done));
    assert_eq!(
        s.run(mkdir("/a/f/g", true)),
        Err(MetaError::NotADirectory(p("/a/f")))
    );
    assert_eq!(
        s.run(mkdir("/a/f", true)),
        Err(MetaError::AlreadyExists(p("/a/f")))
    );
}

#[test]
fn create_is_exclusive_and_a_retry_gets_its_first_reply() {
    let mut s = Sim::new();
    let req = Request {
        client: 9,
        seq: 1,
        now_ms: 5,
        cmd: create("/f"),
    };
    assert_eq!(s.st.apply(req.clone()), Ok(Reply::Done));
    // The reply was lost; the client retries the same request.
    assert_eq!(s.st.apply(req.clone()), Ok(Reply::Done));
    // A different request (another client) for the same path is refused.
    assert_eq!(s.run(create("/f")), Err(MetaError::AlreadyExists(p("/f"))));
    assert_eq!(
        s.st.stat(&p("/f")),
        Ok(Inode::File(FileMeta {
            length: 0,
            mtime_ms: 5,
            replication: 3,
            chunks: vec![]
        }))
    );
    assert_eq!(
        s.run(Command::Create {
            path: p("/g"),
            replication: 0
        })
        .map_err(|e| e.to_string()),
        Err("invalid argument: replication 0 is not in 1..=16".into())
    );
    assert_eq!(
        s.run(create("/nope/f")),
        Err(MetaError::NotFound(p("/nope")))
    );
    assert_eq!(
        s.run(create("/f/x")),
        Err(MetaError::NotADirectory(p("/f")))
    );
}

#[test]
fn list_is_one_level_in_name_order_and_paged() {
    let mut s = Sim::new();
    s.run(mkdir("/d/sub", true)).expect("mkdir");
    for n in ["b", "a", "c", "sub/deep"] {
        s.run(create(&format!("/d/{n}"))).expect("create");
    }
    assert_eq!(s.names("/d"), ["a", "b", "c", "sub"]);
    let first = s.st.list(&p("/d"), None, 2).expect("list");
    assert_eq!(
        first
            .entries
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(first.next_after.as_deref(), Some("b"));
    let second = s.st.list(&p("/d"), Some("b"), 2).expect("list");
    assert_eq!(
        second
            .entries
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>(),
        ["c", "sub"]
    );
    assert_eq!(second.next_after, None);
    assert_eq!(
        s.st.list(&p("/d/a"), None, 10),
        Err(MetaError::NotADirectory(p("/d/a")))
    );
    assert_eq!(s.names("/"), ["d"]);
}

#[test]
fn rename_moves_a_file_or_a_whole_tree_atomically() {
    let mut s = Sim::new();
    s.run(mkdir("/src/x", true)).expect("mkdir");
    s.run(create("/src/x/f")).expect("create");
    s.run(create("/src/g")).expect("create");
    s.run(mkdir("/dst", false)).expect("mkdir");
    assert_eq!(
        s.run(Command::Rename {
            from: p("/src"),
            to: p("/dst/moved")
        }),
        Ok(Reply::Done)
    );
    assert_eq!(s.names("/"), ["dst"]);
    assert_eq!(s.names("/dst/moved"), ["g", "x"]);
    assert_eq!(s.names("/dst/moved/x"), ["f"]);
    assert!(s.st.stat(&p("/src/g")).is_err());
    assert_eq!(
        s.run(Command::Rename {
            from: p("/dst"),
            to: p("/dst/moved/inner")
        }),
        Err(MetaError::RenameIntoItself {
            from: p("/dst"),
            to: p("/dst/moved/inner")
        })
    );
    assert_eq!(
        s.run(Command::Rename {
            from: p("/dst/moved/g"),
            to: p("/dst/moved/x/f")
        }),
        Err(MetaError::AlreadyExists(p("/dst/moved/x/f")))
    );
    assert_eq!(
        s.run(Command::Rename {
            from: p("/nope"),
            to: p("/x")
        }),
        Err(MetaError::NotFound(p("/nope")))
    );
    assert_eq!(
        s.run(Command::Rename {
            from: p("/dst/moved/g"),
            to: p("/missing/g")
        }),
        Err(MetaError::NotFound(p("/missing")))
    );
    assert_eq!(
        s.run(Command::Rename {
            from: p("/dst/moved/g"),
            to: p("/g2")
        }),
        Ok(Reply::Done)
    );
    assert_eq!(s.names("/"), ["dst", "g2"]);
}

#[test]
fn delete_hides_and_undelete_restores() {
    let mut s = Sim::new();
    s.run(mkdir("/d/e", true)).expect("mkdir");
    s.run(create("/d/e/f")).expect("create");
    s.run(Command::AddChunk {
        path: p("/d/e/f"),
        index: 0,
        replicas: vec![],
    })
    .expect("chunk");
    assert_eq!(
        s.run(Command::Delete {
            path: p("/d"),
            recursive: false,
            purge: false,
        }),
        Err(MetaError::DirectoryNotEmpty(p("/d")))
    );
    s.now = 2_000;
    assert_eq!(
        s.run(Command::Delete {
            path: p("/d"),
            recursive: true,
            purge: false,
        }),
        Ok(Reply::Deleted { id: 1 })
    );
    assert_eq!(s.names("/"), Vec::<String>::new());
    let (id, d) = s.st.deleted().next().expect("one deleted tree");
    assert_eq!((id, &d.path, d.deleted_at_ms), (1, &p("/d"), 2_000));
    let rel: Vec<&str> = d.entries.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(rel, ["", "/e", "/e/f"]);
    // The deleted file still holds its chunk until it is reclaimed.
    assert_eq!(s.st.chunk(ChunkHandle(1)).map(|c| c.refs), Some(1));
    assert_eq!(
        s.run(Command::Undelete { id: 1 }),
        Ok(Reply::Undeleted { path: p("/d") })
    );
    assert_eq!(s.names("/d/e"), ["f"]);
    assert_eq!(
        s.run(Command::Undelete { id: 1 }),
        Err(MetaError::NoSuchDeleted(1))
    );
    assert_eq!(
        s.run(Command::Delete {
            path: p("/"),
            recursive: true,
            purge: false,
        })
        .map_err(|e| e.to_string()),
        Err("the root directory cannot be deleted".into())
    );
    // Undelete refuses to overwrite a path that was reused meanwhile.
    s.run(Command::Delete {
        path: p("/d/e/f"),
        recursive: false,
        purge: false,
    })
    .expect("delete");
    s.run(create("/d/e/f")).expect("recreate");
    assert_eq!(
        s.run(Command::Undelete { id: 2 }),
        Err(MetaError::AlreadyExists(p("/d/e/f")))
    );
}

fn file_with_chunks(s: &mut Sim, path: &str, n: u64) {
    s.run(create(path)).expect("create");
    for index in 0..n {
        s.run(Command::AddChunk {
            path: p(path),
            index,
            replicas: vec![],
        })
        .expect("chunk");
    }
}

#[test]
fn reclaim_drops_deleted_entries_and_their_chunks_after_retention() {
    let mut s = Sim::new();
    file_with_chunks(&mut s, "/a", 2);
    file_with_chunks(&mut s, "/b", 1);
    assert_eq!(
        s.st.chunk(ChunkHandle(1)),
        Some(ChunkMeta {
            version: ChunkVersion(1),
            refs: 1,
            replication: 3
        })
    );
    let del = |path: &str| Command::Delete {
        path: p(path),
        recursive: false,
        purge: false,
    };
    s.now = 5_000;
    assert_eq!(s.run(del("/a")), Ok(Reply::Deleted { id: 1 }));
    s.now = 9_000;
    assert_eq!(s.run(del("/b")), Ok(Reply::Deleted { id: 2 }));
    // Retention 3 s: at 8 s only /a has run out.
    assert_eq!(s.st.expired_deleted(8_000, 3_000, 10), [1]);
    assert_eq!(s.st.expired_deleted(12_000, 3_000, 10), [1, 2]);
    assert_eq!(s.st.expired_deleted(12_000, 3_000, 1), [1]);
    assert_eq!(
        s.run(Command::Reclaim { ids: vec![1, 7] }),
        Ok(Reply::Reclaimed {
            entries: 1,
            chunks: 2
        })
    );
    assert_eq!(s.st.chunk(ChunkHandle(1)), None);
    assert_eq!(s.st.chunk(ChunkHandle(2)), None);
    assert!(s.st.allocated(ChunkHandle(2)), "reclaimed, not unknown");
    assert!(!s.st.allocated(ChunkHandle(4)));
    assert_eq!(
        s.run(Command::Undelete { id: 1 }),
        Err(MetaError::NoSuchDeleted(1))
    );
    // Reclaiming again changes nothing.
    assert_eq!(
        s.run(Command::Reclaim { ids: vec![1] }),
        Ok(Reply::Reclaimed {
            entries: 0,
            chunks: 0
        })
    );
    assert!(s.st.chunk(ChunkHandle(3)).is_some(), "/b is still held");
}

#[test]
fn purge_and_deleting_a_deleted_path_reclaim_at_once() {
    let mut s = Sim::new();
    file_with_chunks(&mut s, "/a", 1);
    file_with_chunks(&mut s, "/b", 1);
    assert_eq!(
        s.run(Command::Delete {
            path: p("/a"),
            recursive: false,
            purge: true,
        }),
        Ok(Reply::Reclaimed {
            entries: 1,
            chunks: 1
        })
    );
    assert_eq!(s.st.chunk(ChunkHandle(1)), None);
    assert_eq!(s.st.deleted().count(), 0);
    let del = Command::Delete {
        path: p("/b"),
        recursive: false,
        purge: false,
    };
    assert_eq!(s.run(del.clone()), Ok(Reply::Deleted { id: 2 }));
    assert_eq!(
        s.run(del.clone()),
        Ok(Reply::Reclaimed {
            entries: 1,
            chunks: 1
        })
    );
    assert_eq!(s.run(del), Err(MetaError::NotFound(p("/b"))));
}

#[test]
fn snapshot_shares_chunks_ends_leases_and_split_copies_on_write() {
    let mut s = Sim::new();
    s.run(mkdir("/src/sub", true)).expect("mkdir");
    file_with_chunks(&mut s, "/src/a", 2);
    file_with_chunks(&mut s, "/src/sub/b", 1);
    s.run(mkdir("/snaps", false)).expect("mkdir");
    let grant = Command::GrantLease {
        handle: ChunkHandle(1),
        primary: NodeId(4),
        duration_ms: 60_000,
        grace_ms: 0,
        bump: false,
    };
    s.run(grant.clone()).expect("lease");
    let snap = |src: &str, dst: &str| Command::Snapshot {
        src: p(src),
        dst: p(dst),
    };
    assert_eq!(
        s.run(snap("/src", "/snaps/one")),
        Ok(Reply::Snapshotted {
            files: 2,
            chunks: 3,
            leases: vec![(ChunkHandle(1), NodeId(4), ChunkVersion(2))],
        })
    );
    assert_eq!(s.names("/snaps/one"), ["a", "sub"]);
    assert_eq!(s.names("/snaps/one/sub"), ["b"]);
    assert_eq!(s.st.lease(ChunkHandle(1)), None);
    assert_eq!(s.st.chunk(ChunkHandle(1)).map(|c| c.refs), Some(2));
    // A shared chunk gets no lease until it is copied.
    assert_eq!(s.run(grant), Err(MetaError::SharedChunk(ChunkHandle(1))));
    assert_eq!(
        s.run(snap("/src", "/src/sub/x")),
        Err(MetaError::SnapshotIntoItself {
            from: p("/src"),
            to: p("/src/sub/x")
        })
    );
    assert_eq!(
        s.run(snap("/src", "/snaps/one")),
        Err(MetaError::AlreadyExists(p("/snaps/one")))
    );
    // Copy on write: the live file moves to the copy, the snapshot keeps
    // the original.
    let Ok(Reply::Handle { handle: new }) = s.run(Command::AllocHandle) else {
        panic!("a handle")
    };
    assert_eq!(new, ChunkHandle(4));
    let split = Command::SplitChunk {
        path: p("/src/a"),
        index: 0,
        old: ChunkHandle(1),
        new,
        version: ChunkVersion(2),
    };
    let moved = Reply::Chunk {
        handle: new,
        version: ChunkVersion(2),
        index: 0,
        replicas: vec![],
    };
    assert_eq!(s.run(split.clone()), Ok(moved.clone()));
    assert_eq!(s.st.chunk(ChunkHandle(1)).map(|c| c.refs), Some(1));
    assert_eq!(s.st.chunk(new).map(|c| c.refs), Some(1));
    let Inode::File(f) = s.st.stat(&p("/snaps/one/a")).expect("snap") else {
        panic!("a file")
    };
    assert_eq!(f.chunks, [ChunkHandle(1), ChunkHandle(2)]);
    // A second split of the same chunk (a racing writer) changes nothing
    // and names the copy that won.
    assert_eq!(s.run(split), Ok(moved));
    // Deleting the snapshot and reclaiming it frees only what it alone
    // held.
    s.run(Command::Delete {
        path: p("/snaps/one"),
        recursive: true,
        purge: true,
    })
    .expect("purge");
    assert!(
        s.st.chunk(ChunkHandle(1)).is_none(),
        "only the snapshot held it"
    );
    assert_eq!(s.st.chunk(ChunkHandle(2)).map(|c| c.refs), Some(1));
    assert_eq!(s.st.chunk(new).map(|c| c.refs), Some(1));
}

#[test]
fn directory_policies_are_inherited_and_deletes_keep_their_retention() {
    let mut s = Sim::new();
    s.run(mkdir("/tmp/a/b", true)).expect("mkdir");
    let set = |path: &str, replication, retention_ms| Command::SetPolicy {
        path: p(path),
        policy: DirPolicy {
            replication,
            retention_ms,
        },
    };
    s.run(set("/tmp", Some(2), Some(1_000))).expect("policy");
    s.run(set("/tmp/a", None, Some(50))).expect("policy");
    assert_eq!(
        s.st.policy_at(&p("/tmp/a/b/f")),
        DirPolicy {
            replication: Some(2),
            retention_ms: Some(50)
        }
    );
    assert_eq!(s.st.policy_at(&p("/x")), DirPolicy::default());
    assert_eq!(
        s.run(set("/tmp", Some(0), None)),
        Err(MetaError::InvalidArgument(
            "replication must be 1..=16".into()
        ))
    );
    file_with_chunks(&mut s, "/tmp/a/f", 1);
    file_with_chunks(&mut s, "/g", 1);
    let del = |path: &str| Command::Delete {
        path: p(path),
        recursive: false,
        purge: false,
    };
    s.run(del("/tmp/a/f")).expect("delete");
    s.run(del("/g")).expect("delete");
    // /tmp/a keeps deleted files 50 ms, the rest the default (1 s here).
    assert_eq!(s.st.expired_deleted(s.now + 60, 1_000, 10), [1]);
    assert_eq!(s.st.expired_deleted(s.now + 1_000, 1_000, 10), [1, 2]);
    // Clearing a policy: inherited again.
    s.run(set("/tmp/a", None, None)).expect("clear");
    assert_eq!(s.st.policy_at(&p("/tmp/a/f")).retention_ms, Some(1_000));
    assert_eq!(
        s.run(set("/g2", Some(1), None)),
        Err(MetaError::NotFound(p("/g2")))
    );
}

#[test]
fn files_under_walks_a_tree_or_names_one_file() {
    let mut s = Sim::new();
    s.run(mkdir("/d/e", true)).expect("mkdir");
    s.run(create("/d/x")).expect("create");
    s.run(create("/d/e/y")).expect("create");
    s.run(create("/z")).expect("create");
    let names = |s: &Sim, path: &str| -> Vec<String> {
        s.st.files_under(&p(path))
            .expect("exists")
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    };
    assert_eq!(names(&s, "/d"), ["/d/e/y", "/d/x"]);
    assert_eq!(names(&s, "/"), ["/d/e/y", "/d/x", "/z"]);
    assert_eq!(names(&s, "/z"), ["/z"]);
}

#[test]
fn chunks_are_added_by_index_so_racers_and_retries_agree() {
    let mut s = Sim::new();
    s.run(create("/f")).expect("create");
    let add = |i| Command::AddChunk {
        path: p("/f"),
        index: i,
        replicas: vec![NodeId(2), NodeId(5)],
    };
    let first = Reply::Chunk {
        handle: ChunkHandle(1),
        version: ChunkVersion(1),
        index: 0,
        replicas: vec![NodeId(2), NodeId(5)],
    };
    assert_eq!(s.run(add(0)), Ok(first.clone()));
    assert_eq!(
        s.run(add(0)),
        Ok(first),
        "a second appender gets the same chunk"
    );
    assert_eq!(
        s.run(add(2)),
        Err(MetaError::ChunkIndexGap {
            path: p("/f"),
            chunks: 1,
            index: 2
        })
    );
    assert!(matches!(
        s.run(add(1)),
        Ok(Reply::Chunk {
            handle: ChunkHandle(2),
            ..
        })
    ));
    assert_eq!(s.st.chunk_count(), 2);
    assert_eq!(
        s.run(Command::SetLength {
            path: p("/f"),
            length: MIB + 5
        }),
        Ok(Reply::Done)
    );
    assert_eq!(
        s.run(Command::SetLength {
            path: p("/f"),
            length: 10
        }),
        Ok(Reply::Done)
    );
    let Ok(Inode::File(f)) = s.st.stat(&p("/f")) else {
        panic!("file")
    };
    assert_eq!(f.length, MIB + 5, "length never goes down");
    assert_eq!(
        s.run(Command::SetLength {
            path: p("/f"),
            length: 2 * MIB + 1
        }),
        Err(MetaError::LengthBeyondChunks {
            path: p("/f"),
            length: 2 * MIB + 1,
            chunks: 2
        })
    );
}

#[test]
fn a_chunk_added_with_its_lease_is_what_add_then_grant_would_leave() {
    let add = |i, replicas: Vec<NodeId>| Command::AddChunkLeased {
        path: p("/f"),
        index: i,
        replicas,
        duration_ms: 60_000,
        grace_ms: 1_000,
    };
    let mut one = Sim::new();
    one.run(create("/f")).expect("create");
    assert_eq!(
        one.run(add(0, vec![NodeId(2), NodeId(5)])),
        Ok(Reply::ChunkLeased {
            handle: ChunkHandle(1),
            index: 0,
            replicas: vec![NodeId(2), NodeId(5)],
            lease: Lease {
                primary: NodeId(2),
                version: ChunkVersion(2),
                expires_at_ms: 61_000,
            },
        })
    );
    assert!(one.st.unconfirmed(ChunkHandle(1)) && one.st.pristine(ChunkHandle(1)));
    // The same state as the two entries it replaces.
    let mut two = Sim::new();
    two.run(create("/f")).expect("create");
    two.run(Command::AddChunk {
        path: p("/f"),
        index: 0,
        replicas: vec![NodeId(2), NodeId(5)],
    })
    .expect("add");
    two.run(Command::GrantLease {
        handle: ChunkHandle(1),
        primary: NodeId(2),
        duration_ms: 60_000,
        grace_ms: 1_000,
        bump: false,
    })
    .expect("grant");
    // (The client's session differs: it remembers other replies.)
    let state = |s: &Sim| {
        let mut d = s.st.dump();
        d.retain(|(k, _)| !matches!(k.first(), Some(b's')));
        d
    };
    assert_eq!(state(&one), state(&two));
    // A racer asking for the same index gets that chunk, with nothing
    // placed and no new grant; a gap is refused; with no replicas to
    // place, a chunk is added without a lease.
    one.now = 5_000;
    assert_eq!(
        one.run(add(0, vec![NodeId(7), NodeId(8)])),
        Ok(Reply::Chunk {
            handle: ChunkHandle(1),
            version: ChunkVersion(2),
            index: 0,
            replicas: vec![],
        })
    );
    assert_eq!(
        one.st.lease(ChunkHandle(1)).map(|l| l.expires_at_ms),
        Some(61_000)
    );
    assert_eq!(
        one.run(add(2, vec![NodeId(7)])),
        Err(MetaError::ChunkIndexGap {
            path: p("/f"),
            chunks: 1,
            index: 2
        })
    );
    assert_eq!(
        one.run(add(1, vec![])),
        Ok(Reply::Chunk {
            handle: ChunkHandle(2),
            version: ChunkVersion(1),
            index: 1,
            replicas: vec![],
        })
    );
    assert_eq!(one.st.lease(ChunkHandle(2)), None);
}

#[test]
fn leases_bump_the_version_on_grant_and_never_overlap() {
    let (mut s, h) = Sim::with_one_chunk();
    let grant = |n| Command::GrantLease {
        handle: h,
        primary: NodeId(n),
        duration_ms: 60_000,
        grace_ms: 1_000,
        bump: false,
    };
    let lease = |n, v, exp| Lease {
        primary: NodeId(n),
        version: ChunkVersion(v),
        expires_at_ms: exp,
    };
    assert_eq!(
        s.run(grant(1)),
        Ok(Reply::Lease {
            handle: h,
            lease: lease(1, 2, 61_000),
            granted: true
        })
    );
    // The replicas took version 2 (until then the lease was never handed
    // out, and could be granted over).
    s.run(Command::ConfirmVersion {
        handle: h,
        version: ChunkVersion(2),
        replicas: vec![NodeId(1), NodeId(2)],
    })
    .expect("confirm");
    // The same primary asking again extends without a new version.
    s.now = 30_000;
    assert_eq!(
        s.run(grant(1)),
        Ok(Reply::Lease {
            handle: h,
            lease: lease(1, 2, 90_000),
            granted: false
        })
    );
    // Another primary waits for expiry plus the grace period.
    s.now = 90_500;
    assert_eq!(
        s.run(grant(2)),
        Err(MetaError::LeaseHeld {
            handle: h,
            primary: NodeId(1),
            expires_at_ms: 90_000
        })
    );
    s.now = 91_000;
    assert_eq!(
        s.run(grant(2)),
        Ok(Reply::Lease {
            handle: h,
            lease: lease(2, 3, 151_000),
            granted: true
        })
    );
    // A failed replica makes the same primary take a new version at once.
    s.now = 95_000;
    assert_eq!(
        s.run(Command::GrantLease {
            handle: h,
            primary: NodeId(2),
            duration_ms: 60_000,
            grace_ms: 1_000,
            bump: true,
        }),
        Ok(Reply::Lease {
            handle: h,
            lease: lease(2, 4, 155_000),
            granted: true
        })
    );
    // Heartbeat extensions only touch leases the server holds.
    s.now = 100_000;
    let ext = |n| Command::ExtendLeases {
        primary: NodeId(n),
        handles: vec![h, ChunkHandle(99)],
        duration_ms: 60_000,
    };
    assert_eq!(s.run(ext(1)), Ok(Reply::Extended { handles: vec![] }));
    assert_eq!(s.run(ext(2)), Ok(Reply::Extended { handles: vec![h] }));
    assert_eq!(s.st.lease(h), Some(lease(2, 4, 160_000)));
    // Only the holder can give a lease up; then another primary may be
    // granted at once, with a new version.
    let release = |n| Command::ReleaseLeases {
        primary: NodeId(n),
        handles: vec![h],
    };
    assert_eq!(s.run(release(1)), Ok(Reply::Extended { handles: vec![] }));
    assert_eq!(s.run(release(2)), Ok(Reply::Extended { handles: vec![h] }));
    assert_eq!(s.st.lease(h), None);
    assert_eq!(
        s.run(grant(1)),
        Ok(Reply::Lease {
            handle: h,
            lease: lease(1, 5, 160_000),
            granted: true
        })
    );
    assert_eq!(
        s.run(Command::GrantLease {
            handle: ChunkHandle(99),
            primary: NodeId(1),
            duration_ms: 1,
            grace_ms: 0,
            bump: false,
        }),
        Err(MetaError::NoSuchChunk(ChunkHandle(99)))
    );
}

#[test]
fn a_grant_stays_unconfirmed_until_the_replicas_took_its_version() {
    let (mut s, h) = Sim::with_one_chunk();
    let grant = |n, bump| Command::GrantLease {
        handle: h,
        primary: NodeId(n),
        duration_ms: 60_000,
        grace_ms: 1_000,
        bump,
    };
    let confirm = |v| Command::ConfirmVersion {
        handle: h,
        version: ChunkVersion(v),
        replicas: vec![NodeId(3), NodeId(2), NodeId(v), NodeId(2)],
    };
    assert!(!s.st.unconfirmed(h));
    // Never granted, or granted once without confirmation: never written.
    assert!(s.st.pristine(h));
    s.run(grant(1, false)).expect("grant");
    assert!(s.st.unconfirmed(h));
    assert!(s.st.pristine(h));
    // The leader died before the replicas took version 2: the next one
    // grants over it at once, to another primary, since no client was
    // ever told of that lease.
    assert_eq!(
        s.run(grant(2, true)),
        Ok(Reply::Lease {
            handle: h,
            lease: Lease {
                primary: NodeId(2),
                version: ChunkVersion(3),
                expires_at_ms: 61_000,
            },
            granted: true
        })
    );
    // A late confirmation of the older version changes nothing.
    assert_eq!(s.run(confirm(2)), Ok(Reply::Done));
    assert!(s.st.unconfirmed(h));
    assert_eq!(s.st.members(h), None);
    assert!(!s.st.pristine(h), "two grants: not provably unwritten");
    assert_eq!(s.run(confirm(3)), Ok(Reply::Done));
    assert!(!s.st.unconfirmed(h));
    // The replicas writers are sent to under this grant, each once.
    assert_eq!(s.st.members(h), Some(&[NodeId(2), NodeId(3)][..]));
    assert_eq!(s.st.unconfirmed_chunks().count(), 0);
    // A confirmed lease is held against another primary again.
    assert!(matches!(
        s.run(grant(1, true)),
        Err(MetaError::LeaseHeld { .. })
    ));
    // An extension gives no new version and needs no confirmation.
    assert!(matches!(
        s.run(grant(2, false)),
        Ok(Reply::Lease { granted: false, .. })
    ));
    assert!(!s.st.unconfirmed(h));
    // Confirming a chunk that does not exist is harmless.
    assert_eq!(
        s.run(Command::ConfirmVersion {
            handle: ChunkHandle(99),
            version: ChunkVersion(1),
            replicas: vec![NodeId(1)],
        }),
        Ok(Reply::Done)
    );
}

#[test]
fn replicas_applying_the_same_log_agree_exactly() {
    let log: Vec<Request> = (0..200u64)
        .map(|i| {
            let cmd = match i % 5 {
                0 => mkdir(&format!("/d{}", i % 7), true),
                1 => create(&format!("/d{}/f{i}", (i - 1) % 7)),
                2 => Command::AddChunk {
                    path: p(&format!("/d{}/f{}", (i - 2) % 7, i - 1)),
                    index: 0,
                    replicas: vec![],
                },
                3 => Command::Rename {
                    from: p(&format!("/d{}/f{}", (i - 3) % 7, i - 2)),
                    to: p(&format!("/d{}/g{i}", (i - 3) % 7)),
                },
                _ => Command::Delete {
                    path: p(&format!("/d{}", i % 3)),
                    recursive: i % 2 == 0,
                    purge: false,
                },
            };
            Request {
                client: i % 4,
                seq: i,
                now_ms: i * 10,
                cmd,
            }
        })
        .collect();
    let run = |log: &[Request]| {
        let mut st = MasterState::new(MIB);
        let replies: Vec<Outcome> = log.iter().cloned().map(|r| st.apply(r)).collect();
        let listing = st.list(&GfsPath::root(), None, 100).expect("list");
        (replies, listing, st.chunk_count(), st.files())
    };
    assert_eq!(run(&log), run(&log));
}

/// Persisting only the keys each request reports as changed, then loading,
/// gives back exactly the state (compared through a full dump), at every
/// step of a long mixed history.
#[test]
fn persisting_dirty_keys_reproduces_the_state_exactly() {
    use std::collections::BTreeMap;
    let mut st = MasterState::new(MIB);
    let mut disk: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let persist = |st: &mut MasterState, disk: &mut BTreeMap<Vec<u8>, Vec<u8>>| {
        for k in st.take_dirty() {
            match st.value_of(&k) {
                Some(v) => disk.insert(k.encode(), v),
                None => disk.remove(&k.encode()),
            };
        }
    };
    persist(&mut st, &mut disk);
    let (mut pending, mut confirmed) = (false, false);
    for i in 0..300u64 {
        let d = format!("/d{}", i % 5);
        // The lowest chunk a grant left unconfirmed, else the lowest chunk.
        let confirm = st
            .unconfirmed_chunks()
            .next()
            .or_else(|| st.chunks().map(|(h, _)| h).min())
            .unwrap_or(ChunkHandle(1));
        let cmd = match i % 9 {
            0 => mkdir(&format!("{d}/sub{}", i % 3), true),
            1 => create(&format!("{d}/f{i}")),
            2 if i % 4 == 2 => Command::AddChunkLeased {
                path: p(&format!("/d{}/f{}", (i - 1) % 5, i - 1)),
                index: 0,
                replicas: vec![NodeId(i % 3 + 1)],
                duration_ms: 50,
                grace_ms: 5,
            },
            2 => Command::AddChunk {
                path: p(&format!("/d{}/f{}", (i - 1) % 5, i - 1)),
                index: 0,
                replicas: vec![],
            },
            3 => Command::GrantLease {
                handle: confirm,
                primary: NodeId(i % 2),
                duration_ms: 50,
                grace_ms: 5,
                bump: false,
            },
            4 => Command::SetLength {
                path: p(&format!("/d{}/f{}", (i - 3) % 5, i - 3)),
                length: i,
            },
            5 => Command::Rename {
                from: p(&format!("/d{}/f{}", (i - 4) % 5, i - 4)),
                to: p(&format!("/d{}/r{i}", (i + 1) % 5)),
            },
            6 => Command::Delete {
                path: p(&format!("/d{}", i % 4)),
                recursive: true,
                purge: false,
            },
            7 => Command::Undelete { id: i / 20 + 1 },
            8 if i % 18 == 8 => Command::ConfirmVersion {
                handle: confirm,
                version: st.chunk(confirm).map_or(ChunkVersion(0), |c| c.version),
                replicas: vec![NodeId(i % 4), NodeId(i % 3)],
            },
            _ => Command::ExtendLeases {
                primary: NodeId(1),
                handles: vec![ChunkHandle(i / 9)],
                duration_ms: 50,
            },
        };
        let was = st.unconfirmed(confirm);
        let confirming = matches!(cmd, Command::ConfirmVersion { .. });
        let _ = st.apply(Request {
            client: i % 3,
            seq: i,
            now_ms: i * 7,
            cmd,
        });
        pending |= st.unconfirmed_chunks().count() > 0;
        confirmed |= confirming && was && !st.unconfirmed(confirm);
        persist(&mut st, &mut disk);
        let reloaded = MasterState::load(disk.clone()).expect("load");
        assert_eq!(reloaded.dump(), st.dump(), "after request {i}");
    }
    assert!(
        st.chunk_count() > 0 && st.deleted().count() > 0,
        "the history exercised chunks and deletes"
    );
    assert!(
        pending && confirmed,
        "the history had grants unconfirmed and confirmed some"
    );
}

#[test]
fn loading_rejects_damaged_records() {
    let st = MasterState::new(MIB);
    let mut pairs = st.dump();
    pairs.push((b"zzz".to_vec(), vec![1]));
    assert!(matches!(
        MasterState::load(pairs),
        Err(persist::LoadError::UnknownKey(_))
    ));
    let mut pairs = st.dump();
    pairs[0].1 = vec![0xff, 0xff, 0xff];
    assert!(matches!(
        MasterState::load(pairs),
        Err(persist::LoadError::Value { .. })
    ));
    assert!(matches!(
        MasterState::load(Vec::new()),
        Err(persist::LoadError::NoCounters)
    ));
}

#[test]
fn a_batch_applies_each_request_in_order_with_its_own_session_and_its_time() {
    let mut s = Sim::new();
    let create = |path: &str| Command::Create {
        path: p(path),
        replication: 3,
    };
    let req = |client, seq, cmd| Request {
        client,
        seq,
        now_ms: 0,
        cmd,
    };
    let batch = Request {
        client: 0,
        seq: 0,
        now_ms: 77,
        cmd: Command::Batch(vec![
            req(1, 1, create("/a")),
            // Another client's create of the same path loses...
            req(2, 1, create("/a")),
            // ...while client 1's retry gets its first reply.
            req(1, 1, create("/a")),
            req(3, 1, create("/b")),
            req(3, 2, Command::Batch(Vec::new())),
        ]),
    };
    assert_eq!(
        s.st.apply(batch),
        Ok(Reply::Batch(vec![
            Ok(Reply::Done),
            Err(MetaError::AlreadyExists(p("/a"))),
            Ok(Reply::Done),
            Ok(Reply::Done),
            Err(MetaError::InvalidArgument("nested batch".into())),
        ]))
    );
    assert_eq!(s.names("/"), ["a", "b"]);
    let Ok(Inode::File(f)) = s.st.stat(&p("/b")) else {
        panic!("/b is a file")
    };
    assert_eq!(f.mtime_ms, 77, "the batch's time, not the inner zero");
}

/// Seeded random damage to a saved state's records (bytes flipped, values
/// cut or replaced, records dropped or duplicated under other keys): each
/// load is an error, or a state that still dumps, lists and applies
/// requests without panicking.
#[test]
fn random_damage_to_saved_records_is_an_error_or_a_state_that_serves() {
    let mut s = Sim::new();
    s.run(mkdir("/d", false)).expect("mkdir");
    file_with_chunks(&mut s, "/d/a", 3);
    file_with_chunks(&mut s, "/d/b", 2);
    s.run(Command::Snapshot {
        src: p("/d"),
        dst: p("/s"),
    })
    .expect("snapshot");
    s.run(Command::Delete {
        path: p("/d/b"),
        recursive: false,
        purge: false,
    })
    .expect("delete");
    let saved = s.st.dump();
    // splitmix64, seeded: the same damage every run.
    let mut x = 0x6c6f_6164_u64;
    let mut next = move || {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let (mut refused, mut loaded) = (0, 0);
    for round in 0..3000 {
        let mut pairs = saved.clone();
        for _ in 0..1 + next() % 3 {
            let i = (next() % pairs.len() as u64) as usize;
            let (k, v) = &mut pairs[i];
            match next() % 6 {
                0 if !v.is_empty() => {
                    let at = (next() % v.len() as u64) as usize;
                    v[at] ^= 1 << (next() % 8);
                }
                1 => v.truncate((next() % (v.len() as u64 + 1)) as usize),
                2 => *v = (0..next() % 40).map(|_| next() as u8).collect(),
                3 if !k.is_empty() => {
                    let at = (next() % k.len() as u64) as usize;
                    k[at] = next() as u8;
                }
                4 => {
                    let mut copy = pairs[i].clone();
                    copy.0.push(next() as u8);
                    pairs.push(copy);
                }
                _ => {
                    pairs.remove(i);
                }
            }
        }
        let Ok(mut st) = MasterState::load(pairs) else {
            refused += 1;
            continue;
        };
        loaded += 1;
        let _ = st.dump();
        let _ = st.list(&p("/"), None, 100);
        let _ = st.list(&p("/d"), None, 100);
        let cmds = [
            create("/new"),
            Command::AddChunk {
                path: p("/d/a"),
                index: 3,
                replicas: vec![],
            },
            Command::Snapshot {
                src: p("/d"),
                dst: p("/t"),
            },
            Command::Undelete { id: 1 },
            Command::Delete {
                path: p("/d"),
                recursive: true,
                purge: true,
            },
            Command::Reclaim { ids: vec![1, 2, 3] },
        ];
        for (n, cmd) in cmds.into_iter().enumerate() {
            let _ = st.apply(Request {
                client: 9,
                seq: round * 10 + n as u64,
                now_ms: 10_000_000,
                cmd,
            });
        }
        let _ = st.dump();
    }
    eprintln!("damaged records: {refused} loads refused, {loaded} loaded");
    assert!(
        refused > 0 && loaded > 0,
        "refused {refused}, loaded {loaded}"
    );
}
