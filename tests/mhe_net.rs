//! Multiparty rounds over real TCP sockets on localhost (`workers::parties`): a full key
//! generation + decryption with parties on their own threads, and every failure the hub must
//! type instead of hanging — a party that never connects or never answers, malformed bytes, a
//! copied (replayed) share, a share for another run, other parameters or key set.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use hetensor::ckks::{CkksContext, CkksParams};
use hetensor::math::sampler::Sampler;
use hetensor::mhe::{self, Crs, Party, Protocol, Smudging};
use hetensor::rlwe::{Ciphertext, RlweContext};
use hetensor::serialize::{self, WriteOptions};
use hetensor::workers::parties::{CombinerHub, NetConfig, PartyLink};
use hetensor::Error;

fn ckks() -> CkksContext {
    CkksContext::with_seed(CkksParams::preset(13, 25).unwrap(), [1; 32]).unwrap()
}

fn quick() -> NetConfig {
    NetConfig {
        timeout: Duration::from_millis(400),
        ..NetConfig::default()
    }
}

fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

fn frame(s: &mut TcpStream, tag: u8, payload: &[u8]) {
    s.write_all(&[tag]).unwrap();
    s.write_all(&(payload.len() as u64).to_le_bytes()).unwrap();
    s.write_all(payload).unwrap();
}

/// A hand-made client that introduces itself (as `PartyLink::connect` does).
fn raw_party(addr: SocketAddr, index: u32, fingerprint: u64, key_id: u64) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut hello = index.to_le_bytes().to_vec();
    hello.extend_from_slice(&fingerprint.to_le_bytes());
    hello.extend_from_slice(&key_id.to_le_bytes());
    frame(&mut s, 0x21, &hello);
    s
}

/// Three parties on threads, each with its own TCP connection: collective public key, then a
/// collective decryption of a ciphertext encrypted under it; every party derives the same
/// public key from the aggregate it receives.
#[test]
fn three_parties_over_tcp_generate_a_key_and_decrypt() {
    let ckks = ckks();
    let ctx: Arc<RlweContext> = ckks.rlwe().clone();
    let crs = Crs::new([9; 32]);
    let (l, addr) = listener();
    let level = 2;
    let mut senders = Vec::new();
    let mut handles = Vec::new();
    for i in 0..3u32 {
        let ctx = ctx.clone();
        let (tx, rx) = mpsc::channel::<Ciphertext>();
        senders.push(tx);
        handles.push(std::thread::spawn(move || -> hetensor::Result<Vec<u8>> {
            let mut p = Party::new(ctx.clone(), crs, Sampler::from_seed([i as u8 + 20; 32]))?;
            let mut link = PartyLink::connect(addr, ctx.clone(), &crs, i, NetConfig::default())?;
            let ckg = link.exchange(&p.ckg_share()?)?;
            let pk = mhe::ckg_finalize(&ctx, &crs, &ckg)?;
            let ct = rx.recv().expect("ciphertext");
            link.send(&p.cks_share(&ct, None, &Smudging::bits(10)?, 1)?)?;
            link.receive(Protocol::Cks { run: 1 }, level)?;
            serialize::to_bytes(&ctx, &pk, WriteOptions::default())
        }));
    }
    let mut hub = CombinerHub::accept(&l, ctx.clone(), &crs, 3, NetConfig::default()).unwrap();
    let ckg = hub.round(Protocol::Ckg, ctx.max_level()).unwrap();
    let pk = mhe::ckg_finalize(&ctx, &crs, &ckg).unwrap();
    let vals = [0.5, -0.25, 0.125];
    let ct = ckks
        .encrypt(
            &ckks.encode(&vals, ckks.default_scale(), level).unwrap(),
            &pk,
        )
        .unwrap();
    for tx in &senders {
        tx.send(ct.clone()).unwrap();
    }
    let agg = hub.round(Protocol::Cks { run: 1 }, level).unwrap();
    let phase = mhe::decrypt_finalize(&ctx, &ct, &agg).unwrap();
    let out = ckks.decode_poly(&phase, ct.scale()).unwrap();
    for (o, v) in out.iter().zip(vals) {
        assert!((o.re - v).abs() < 1e-2, "{} vs {v}", o.re);
    }
    let mine = serialize::to_bytes(&ctx, &pk, WriteOptions::default()).unwrap();
    for h in handles {
        assert_eq!(
            h.join().unwrap().unwrap(),
            mine,
            "every party holds the same public key"
        );
    }
    // The same run again is refused by the hub.
    assert!(matches!(
        hub.round(Protocol::Ckg, ctx.max_level()),
        Err(Error::Multiparty(_))
    ));
}

#[test]
fn a_party_that_never_connects_is_a_missing_party() {
    let ckks = ckks();
    let ctx = ckks.rlwe().clone();
    let crs = Crs::new([2; 32]);
    let (l, addr) = listener();
    let _a = raw_party(addr, 0, ctx.fingerprint(), crs.key_id());
    match CombinerHub::accept(&l, ctx, &crs, 2, quick()) {
        Err(Error::MissingParty(m)) => assert!(m.contains("[1]"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// What a misbehaving party 1 sends, given party 0's serialized share.
type Misbehaviour = Box<dyn FnOnce(&mut TcpStream, &[u8])>;

/// Runs one CKG round where party 0 is honest and party 1 sends `bad` (None: nothing).
fn ckg_round_with(bad: Option<Misbehaviour>) -> Error {
    let ckks = ckks();
    let ctx = ckks.rlwe().clone();
    let crs = Crs::new([3; 32]);
    let (l, addr) = listener();
    let mut p0 = Party::new(ctx.clone(), crs, Sampler::from_seed([4; 32])).unwrap();
    let share0 =
        serialize::to_bytes(&ctx, &p0.ckg_share().unwrap(), WriteOptions::default()).unwrap();
    let mut a = raw_party(addr, 0, ctx.fingerprint(), crs.key_id());
    let mut b = raw_party(addr, 1, ctx.fingerprint(), crs.key_id());
    let mut hub = CombinerHub::accept(&l, ctx.clone(), &crs, 2, quick()).unwrap();
    frame(&mut a, 0x22, &share0);
    if let Some(f) = bad {
        f(&mut b, &share0);
    }
    let err = hub.round(Protocol::Ckg, ctx.max_level()).unwrap_err();
    drop((a, b));
    err
}

#[test]
fn a_party_that_stalls_is_a_missing_party() {
    assert!(matches!(ckg_round_with(None), Error::MissingParty(_)));
}

#[test]
fn malformed_replayed_and_foreign_shares_are_typed_errors() {
    // Garbage in a share frame.
    let e = ckg_round_with(Some(Box::new(|s, _| frame(s, 0x22, b"not a share at all"))));
    assert!(e.is_decode_failure(), "{e:?}");
    // A copy of party 0's share.
    let e = ckg_round_with(Some(Box::new(|s, share0| frame(s, 0x22, share0))));
    assert!(
        matches!(&e, Error::Multiparty(m) if m.contains("replay")),
        "{e:?}"
    );
    // A share of another protocol run (a decryption share where a key share is due).
    let e = ckg_round_with(Some(Box::new(|s, _| {
        let ckks = ckks();
        let ctx = ckks.rlwe().clone();
        let crs = Crs::new([3; 32]);
        let mut p = Party::new(ctx.clone(), crs, Sampler::from_seed([5; 32])).unwrap();
        let pk = mhe::ckg_finalize(&ctx, &crs, &p.ckg_share().unwrap()).unwrap();
        let ct = ckks
            .encrypt(&ckks.encode(&[1.0], ckks.default_scale(), 1).unwrap(), &pk)
            .unwrap();
        let cks = p
            .cks_share(&ct, None, &Smudging::bits(10).unwrap(), 7)
            .unwrap();
        frame(
            s,
            0x22,
            &serialize::to_bytes(&ctx, &cks, WriteOptions::default()).unwrap(),
        );
    })));
    assert!(
        matches!(&e, Error::Multiparty(m) if m.contains("Cks")),
        "{e:?}"
    );
    // A share of another key set (another CRS).
    let e = ckg_round_with(Some(Box::new(|s, _| {
        let ckks = ckks();
        let ctx = ckks.rlwe().clone();
        let mut p =
            Party::new(ctx.clone(), Crs::new([8; 32]), Sampler::from_seed([6; 32])).unwrap();
        let sh = p.ckg_share().unwrap();
        frame(
            s,
            0x22,
            &serialize::to_bytes(&ctx, &sh, WriteOptions::default()).unwrap(),
        );
    })));
    assert!(matches!(e, Error::KeyMismatch(_)), "{e:?}");
    // A share made under other parameters.
    let e = ckg_round_with(Some(Box::new(|s, _| {
        let other = CkksContext::new(CkksParams::preset(12, 25).unwrap()).unwrap();
        let ctx = other.rlwe().clone();
        let mut p =
            Party::new(ctx.clone(), Crs::new([3; 32]), Sampler::from_seed([6; 32])).unwrap();
        let sh = p.ckg_share().unwrap();
        frame(
            s,
            0x22,
            &serialize::to_bytes(&ctx, &sh, WriteOptions::default()).unwrap(),
        );
    })));
    assert!(matches!(e, Error::ParameterMismatch(_)), "{e:?}");
}

#[test]
fn parties_of_other_parameters_or_key_sets_cannot_join() {
    let ckks = ckks();
    let ctx = ckks.rlwe().clone();
    let crs = Crs::new([2; 32]);
    let (l, addr) = listener();
    let _a = raw_party(addr, 0, ctx.fingerprint() ^ 1, crs.key_id());
    assert!(matches!(
        CombinerHub::accept(&l, ctx.clone(), &crs, 1, quick()),
        Err(Error::ParameterMismatch(_))
    ));
    let (l, addr) = listener();
    let _b = raw_party(addr, 0, ctx.fingerprint(), crs.key_id() ^ 1);
    assert!(matches!(
        CombinerHub::accept(&l, ctx.clone(), &crs, 1, quick()),
        Err(Error::KeyMismatch(_))
    ));
    let (l, addr) = listener();
    let _c = raw_party(addr, 5, ctx.fingerprint(), crs.key_id());
    assert!(matches!(
        CombinerHub::accept(&l, ctx, &crs, 1, quick()),
        Err(Error::Multiparty(_))
    ));
}
