//! Serve the iSCSI security stage with CHAP on a TCP address and print one
//! line per login attempt; used by `tests/vm/open-iscsi-chap.sh` to run the
//! Linux initiator (open-iscsi) against [`chap::Authenticator`]. Test
//! scaffolding, not a target: it hangs up after CHAP.
//!
//! Usage: `chap_probe ADDR USER SECRET [TARGET_USER TARGET_SECRET]`
//!
//! Output lines: `algorithm=<A> user=<N> outcome=<O>`, flushed per login.

#[path = "../tests/common/probe.rs"]
mod probe;

use std::io::Write;
use std::net::TcpListener;

use chap::{Credential, CredentialSet};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 3 && args.len() != 5 {
        eprintln!("usage: chap_probe ADDR USER SECRET [TARGET_USER TARGET_SECRET]");
        std::process::exit(2);
    }
    let mut creds = CredentialSet::new().with_user(Credential::new(&args[1], args[2].as_str()));
    if args.len() == 5 {
        creds = creds.with_mutual(Credential::new(&args[3], args[4].as_str()));
    }
    let listener = match TcpListener::bind(&args[0]) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("chap_probe: bind {}: {e}", args[0]);
            std::process::exit(1);
        }
    };
    loop {
        let served = std::panic::catch_unwind(|| probe::serve_one(&listener, creds.clone()));
        match served {
            Ok((alg, user, outcome)) => {
                let alg = alg.map_or_else(|| "none".to_owned(), |a| a.to_string());
                println!(
                    "algorithm={alg} user={} outcome={outcome:?}",
                    user.as_deref().unwrap_or("-")
                );
            }
            Err(_) => println!("algorithm=none user=- outcome=Broken"),
        }
        let _ = std::io::stdout().flush();
    }
}
