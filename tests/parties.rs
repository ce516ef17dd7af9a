//! Parties as real processes: `hetensor party` processes, each with its own key share, talk to
//! a coordinator (this test, which holds no share) over TCP on localhost
//! (`workers::session`). Checked: collective keys, computation, collective refresh and
//! decryption to one party against the plaintext; no byte of the recorded transcript (every
//! frame, both ways) carries a share; a replayed run, a refused request, a party that dies,
//! never comes, or belongs to another session or parameter set are typed errors.
//!
//! Runs at the training parameters of N = 2^13. `cargo test --release --test parties`.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use hetensor::ckks::CkksContext;
use hetensor::math::sampler::Sampler;
use hetensor::mhe::{Crs, Party, RefreshParams, Smudging};
use hetensor::rlwe::keys::ckks_galois_element;
use hetensor::rlwe::{RlweContext, SecretKey};
use hetensor::serialize::{self, WriteOptions};
use hetensor::train::multiparty::published_values;
use hetensor::train::training_params;
use hetensor::workers::parties::{CombinerHub, NetConfig};
use hetensor::workers::session::Coordinator;
use hetensor::Error;

#[path = "support/secrets.rs"]
mod secrets;
use secrets::{leaks, secret_windows};

fn ckks(log_n: u32) -> CkksContext {
    CkksContext::new(training_params(log_n).unwrap()).unwrap()
}

/// Party processes, killed if the test ends before they do.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Procs {
    /// Waits for every party to exit; all must succeed.
    fn wait_ok(&mut self) {
        for (i, c) in self.0.iter_mut().enumerate() {
            let s = c.wait().unwrap();
            assert!(s.success(), "party {i} exited with {s}");
        }
    }
}

fn hex(seed: [u8; 32]) -> String {
    seed.iter().map(|b| format!("{b:02x}")).collect()
}

/// `hetensor party` number `i` of `k` (stderr discarded: failures are the coordinator's to
/// report).
fn party(
    addr: SocketAddr,
    i: usize,
    k: usize,
    crs: &Crs,
    log_n: u32,
    share: Option<&Path>,
) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hetensor"));
    cmd.args(["party", "--connect", &addr.to_string()])
        .args(["--index", &i.to_string(), "--parties", &k.to_string()])
        .args(["--crs", &hex(crs.seed()), "--log-n", &log_n.to_string()])
        // `training_params(log_n)`, the 2^26 chain, as the coordinators below.
        .args(["--output-smudging", "weak"])
        .env("RAYON_NUM_THREADS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(s) = share {
        cmd.arg("--share").arg(s);
    }
    cmd.spawn().expect("start hetensor party")
}

fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

fn net(secs: u64) -> NetConfig {
    NetConfig {
        timeout: Duration::from_secs(secs),
        ..NetConfig::default()
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hetensor-parties-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Three parties with fresh shares (from the OS) in a session over `crs`.
fn session(ctx: &Arc<RlweContext>, crs: Crs) -> (Coordinator, Procs) {
    let (l, addr) = listener();
    let procs = Procs((0..3).map(|i| party(addr, i, 3, &crs, 13, None)).collect());
    let hub = CombinerHub::accept(&l, ctx.clone(), &crs, 3, net(60)).unwrap();
    (Coordinator::new(hub, ctx.clone(), crs), procs)
}

/// Keys, a product and a rotation under the collective keys, a collective refresh and two
/// decryptions to single parties, all against the plaintext; the shares (given to the party
/// processes on their disks) appear nowhere in the transcript.
#[test]
fn party_processes_compute_refresh_and_decrypt_and_no_message_carries_a_share() {
    let ckks = ckks(13);
    let ctx = ckks.rlwe().clone();
    let crs = Crs::new(Sampler::from_os().seed());
    let dir = scratch("shares");
    // The shares, made here only so that the test can look for them in the transcript.
    let holders: Vec<Party> = (0..3)
        .map(|_| Party::new(ctx.clone(), crs, Sampler::from_os()).unwrap())
        .collect();
    let shares: Vec<&SecretKey> = holders.iter().map(|p| p.secret_share()).collect();
    let (l, addr) = listener();
    let mut procs = Procs(
        shares
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let p = dir.join(format!("share{i}"));
                let bytes = serialize::to_bytes(&ctx, *s, WriteOptions::default()).unwrap();
                std::fs::write(&p, bytes).unwrap();
                party(addr, i, 3, &crs, 13, Some(&p))
            })
            .collect(),
    );
    let mut hub = CombinerHub::accept(&l, ctx.clone(), &crs, 3, net(60)).unwrap();
    hub.record_transcript();
    let mut coord = Coordinator::new(hub, ctx.clone(), crs);
    let g = ckks_galois_element(ctx.n(), 1);
    let keys = coord.keygen(&[g]).unwrap();

    let slots = ckks.slots();
    let x: Vec<f64> = (0..slots)
        .map(|i| ((i * 7 % 31) as f64 - 15.0) / 16.0)
        .collect();
    let y: Vec<f64> = (0..slots)
        .map(|i| ((i * 11 % 23) as f64 - 11.0) / 12.0)
        .collect();
    let enc = |v: &[f64]| {
        ckks.encrypt(
            &ckks
                .encode(v, ckks.default_scale(), ckks.max_level())
                .unwrap(),
            &keys.public,
        )
        .unwrap()
    };
    let prod = ckks
        .rescale(
            &ckks
                .relinearize(&ckks.multiply(&enc(&x), &enc(&y)).unwrap(), &keys.relin)
                .unwrap(),
        )
        .unwrap();
    let rot = ckks.rotate(&prod, 1, &keys.galois).unwrap();
    let want: Vec<f64> = (0..slots)
        .map(|i| x[(i + 1) % slots] * y[(i + 1) % slots])
        .collect();
    let params = RefreshParams::new(3, 26.0 + 2.0);
    let fresh = coord.refresh(&rot, &params).unwrap();
    assert_eq!(fresh.level(), ckks.max_level());
    // Smudging small enough for CKKS precision at Δ = 2^26 (see hetensor::mhe).
    let smudging = Smudging::bits(10).unwrap();
    for (ct, to, want) in [
        (&fresh, 0, &want),
        (&prod, 2, &(0..slots).map(|i| x[i] * y[i]).collect()),
    ] {
        let got = published_values(&coord.decrypt_to(ct, to, &smudging).unwrap()).unwrap();
        let err = got
            .iter()
            .zip(want.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-2, "decryption to party {to}: max error {err}");
    }
    assert_eq!(coord.decryptions(), &[1, 0, 1]);
    for i in 0..3 {
        assert!(
            coord.hub().bytes_from(i) > 1_000_000,
            "party {i} sent shares"
        );
    }
    let transcript = coord.hub().transcript().to_vec();
    assert!(transcript.len() > 10_000_000, "{}", transcript.len());
    for (i, s) in shares.iter().enumerate() {
        let w = secret_windows(&ctx, s);
        assert!(
            !leaks(&transcript, &w),
            "party {i}'s share is in the transcript"
        );
        // The scan sees a share where there is one.
        let mut planted = transcript[..4096].to_vec();
        planted.extend(serialize::to_bytes(&ctx, *s, WriteOptions::default()).unwrap());
        assert!(leaks(&planted, &w));
    }
    coord.finish().unwrap();
    procs.wait_ok();
    let _ = std::fs::remove_dir_all(dir);
}

/// A run replayed by the coordinator is refused before anything is sent; a request the parties
/// refuse is a typed error and leaves the session usable; a party that dies mid-session is a
/// missing party.
#[test]
fn replays_refusals_and_a_dead_party_are_typed_errors() {
    let ckks = ckks(13);
    let ctx = ckks.rlwe().clone();
    let (mut coord, mut procs) = session(&ctx, Crs::new(Sampler::from_os().seed()));
    let keys = coord.keygen(&[]).unwrap();
    let ct = ckks
        .encrypt(
            &ckks.encode(&[0.5, -0.25], ckks.default_scale(), 3).unwrap(),
            &keys.public,
        )
        .unwrap();
    let params = RefreshParams::new(3, 28.0);
    coord.refresh_run(&ct, 7, &params).unwrap();
    match coord.refresh_run(&ct, 7, &params) {
        Err(Error::Multiparty(m)) => assert!(m.contains("replay"), "{m}"),
        other => panic!("{other:?}"),
    }
    match coord.jobs(&vec![b"not a job".to_vec(); 3]) {
        Err(Error::Multiparty(m)) => assert!(m.contains("refused"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Still in step after the refusals.
    let fresh = coord.refresh(&ct, &params).unwrap();
    assert_eq!(fresh.level(), ckks.max_level());
    procs.0[2].kill().unwrap();
    procs.0[2].wait().unwrap();
    match coord.refresh(&ct, &params) {
        Err(Error::MissingParty(m)) => assert!(m.contains("party 2"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// A party that never connects, one of another session (CRS) and one of other parameters.
#[test]
fn absent_and_foreign_parties_are_refused() {
    let ckks = ckks(13);
    let ctx = ckks.rlwe().clone();
    let crs = Crs::new(Sampler::from_os().seed());
    let (l, addr) = listener();
    let _p = Procs((0..2).map(|i| party(addr, i, 3, &crs, 13, None)).collect());
    match CombinerHub::accept(&l, ctx.clone(), &crs, 3, net(10)) {
        Err(Error::MissingParty(m)) => assert!(m.contains("[2]"), "{m}"),
        other => panic!("{other:?}"),
    }
    let other = Crs::new(Sampler::from_os().seed());
    let (l, addr) = listener();
    let _q = Procs(vec![party(addr, 0, 2, &other, 13, None)]);
    assert!(matches!(
        CombinerHub::accept(&l, ctx.clone(), &crs, 2, net(30)),
        Err(Error::KeyMismatch(_))
    ));
    let (l, addr) = listener();
    let _r = Procs(vec![party(addr, 0, 2, &crs, 14, None)]);
    assert!(matches!(
        CombinerHub::accept(&l, ctx, &crs, 2, net(30)),
        Err(Error::ParameterMismatch(_))
    ));
}
