//! The gfs-rs client library and the `gfs` command line.
//!
//! Nothing is implemented yet: the master side of the client comes with the
//! master issue, the data path with the data-path issue. This crate exists so
//! that the workspace has its final shape; it exports nothing and pretends
//! nothing.
