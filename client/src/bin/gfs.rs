//! `gfs`: the gfs-rs command line (metadata and admin commands so far).

use clap::{Parser, Subcommand};
use gfs_client::{MasterClient, MasterOptions};
use gfs_proto::wire::master::{
    AddMasterRequest, Empty, FileInfo, RemoveMasterRequest, TransferLeaderRequest,
};

#[derive(Debug, Parser)]
#[command(name = "gfs", version, about = "gfs-rs command line")]
struct Args {
    /// Comma-separated master addresses (host:port).
    #[arg(long, env = "GFS_MASTERS", value_delimiter = ',', required = true)]
    masters: Vec<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Make a directory (-p: with its parents, no error if it exists).
    Mkdir {
        path: String,
        #[arg(short)]
        p: bool,
    },
    /// Create an empty file (fails if it exists).
    Touch {
        path: String,
        #[arg(long, default_value_t = 0)]
        replication: u32,
    },
    Stat {
        path: String,
        /// Serve from any master without confirming leadership.
        #[arg(long)]
        stale: bool,
    },
    Ls {
        #[arg(default_value = "/")]
        path: String,
    },
    Mv {
        from: String,
        to: String,
    },
    /// Delete (recoverable with `undelete` until reclaimed).
    Rm {
        path: String,
        #[arg(short)]
        r: bool,
    },
    Undelete {
        id: u64,
    },
    #[command(subcommand)]
    Admin(Admin),
}

#[derive(Debug, Subcommand)]
enum Admin {
    /// Every master's view: role, term, leader, log and applied index.
    Status,
    /// Hand leadership to another master (0: the most up to date).
    TransferLeader {
        #[arg(default_value_t = 0)]
        to: u64,
    },
    AddMaster {
        id: u64,
        addr: String,
    },
    RemoveMaster {
        id: u64,
    },
}

fn show(f: &FileInfo) {
    if f.is_dir {
        println!("d {:>14} {}", "-", f.name);
    } else {
        println!(
            "f {:>14} {} (chunks {}, r{})",
            f.length, f.name, f.chunks, f.replication
        );
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gfs: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(a: Args) -> anyhow::Result<()> {
    let c = MasterClient::new(&a.masters, MasterOptions::default())?;
    match a.cmd {
        Cmd::Mkdir { path, p } => c.mkdir(&path, p).await?,
        Cmd::Touch { path, replication } => c.create(&path, replication).await?,
        Cmd::Stat { path, stale } => show(&c.stat(&path, stale).await?),
        Cmd::Ls { path } => c.list(&path).await?.iter().for_each(show),
        Cmd::Mv { from, to } => c.rename(&from, &to).await?,
        Cmd::Rm { path, r } => println!("deleted, undelete id {}", c.delete(&path, r).await?),
        Cmd::Undelete { id } => println!("restored {}", c.undelete(id).await?),
        Cmd::Admin(Admin::Status) => {
            for (i, addr) in a.masters.iter().enumerate() {
                match c.status_of(i).await {
                    Ok(s) => println!(
                        "{addr}: id {} {} term {} leader {} log {} applied {} files {} chunks {} chunkservers {}",
                        s.id,
                        s.state,
                        s.term,
                        s.leader_id,
                        s.last_log_index,
                        s.applied_index,
                        s.files,
                        s.chunks,
                        s.chunkservers
                    ),
                    Err(e) => println!("{addr}: {e}"),
                }
            }
        }
        Cmd::Admin(cmd) => {
            let leader = leader_index(&c, &a.masters).await?;
            let mut admin = c.admin(leader);
            match cmd {
                Admin::TransferLeader { to } => {
                    admin.transfer_leader(TransferLeaderRequest { to }).await?;
                }
                Admin::AddMaster { id, addr } => {
                    admin.add_master(AddMasterRequest { id, addr }).await?;
                }
                Admin::RemoveMaster { id } => {
                    admin.remove_master(RemoveMasterRequest { id }).await?;
                }
                Admin::Status => {
                    admin.status(Empty {}).await?;
                }
            }
            println!("done");
        }
    }
    Ok(())
}

async fn leader_index(c: &MasterClient, masters: &[String]) -> anyhow::Result<usize> {
    for i in 0..masters.len() {
        if let Ok(s) = c.status_of(i).await
            && s.state == "leader"
        {
            return Ok(i);
        }
    }
    anyhow::bail!("no master is the leader right now")
}
