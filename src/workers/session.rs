//! A multiparty session between a **coordinator**, who holds no key share, and `K` **parties**,
//! each its own process with its own [`Party`], over the star of [`super::parties`].
//!
//! The coordinator drives: it sends each party a request, the parties answer with shares (or,
//! for application jobs and published plaintexts, a reply), and the coordinator aggregates and
//! finishes every protocol ([`Coordinator::keygen`], [`Coordinator::refresh`],
//! [`Coordinator::decrypt_to`], [`Coordinator::reencrypt_to`]). A party runs [`serve_party`]: it answers each request with
//! its own [`Party`], whose secret share never leaves the process; what a party does besides
//! the protocols (encrypt its data, use a plaintext it receives) is its [`PartyApp`].
//!
//! A party that cannot or will not answer a request (a protocol run it has already answered:
//! a retry could reveal its share; a malformed request) sends a refusal, which the coordinator
//! returns as [`Error::Multiparty`]. The coordinator refuses to start a protocol run twice
//! (the hub's record) and the parties refuse to answer one twice (their [`Party`]'s).

use std::sync::Arc;

use super::parties::{CombinerHub, PartyLink};
use crate::backend::PolyBatch;
use crate::error::{Error, Result};
use crate::mhe::{self, Crs, Party, Protocol, RefreshParams, Smudging};
use crate::rlwe::{Ciphertext, GaloisKeys, PublicKey, RelinKey, RlweContext};
use crate::serialize::{self, WriteOptions};

const OP_CKG: u8 = 1;
const OP_RKG: u8 = 2;
const OP_RTG: u8 = 3;
const OP_REFRESH: u8 = 4;
const OP_DECRYPT: u8 = 5;
const OP_JOB: u8 = 6;
const OP_BYE: u8 = 7;
const OP_PCKS: u8 = 8;

/// The collective keys of a session: what the coordinator (or anyone) computes with.
pub struct CollectiveKeys {
    /// Public encryption key.
    pub public: PublicKey,
    /// Relinearization key.
    pub relin: RelinKey,
    /// Galois keys for the requested elements.
    pub galois: GaloisKeys,
}

/// The coordinator's end of a session: requests, aggregation, and the protocols' finishing
/// steps. Holds no secret.
pub struct Coordinator {
    hub: CombinerHub,
    ctx: Arc<RlweContext>,
    crs: Crs,
    next_run: u64,
    rounds: usize,
    decryptions: Vec<usize>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Coordinator({:?}, {:?})", self.hub, self.crs)
    }
}

impl Coordinator {
    /// A session over a hub whose parties are connected (see [`CombinerHub::accept`]).
    pub fn new(hub: CombinerHub, ctx: Arc<RlweContext>, crs: Crs) -> Self {
        let k = hub.parties();
        Self {
            hub,
            ctx,
            crs,
            next_run: 1,
            rounds: 0,
            decryptions: vec![0; k],
        }
    }

    /// The hub (byte counts, transcript).
    pub fn hub(&self) -> &CombinerHub {
        &self.hub
    }

    /// The hub, to record a transcript.
    pub fn hub_mut(&mut self) -> &mut CombinerHub {
        &mut self.hub
    }

    /// Protocol rounds run so far (a round: one share from each party that takes part).
    pub fn rounds(&self) -> usize {
        self.rounds
    }

    /// Collective decryptions received by each party so far.
    pub fn decryptions(&self) -> &[usize] {
        &self.decryptions
    }

    fn everyone(&self) -> Vec<usize> {
        (0..self.hub.parties()).collect()
    }

    fn request_all(&mut self, payload: &[u8]) -> Result<()> {
        for i in self.everyone() {
            self.hub.request(i, payload)?;
        }
        Ok(())
    }

    fn gather_all(&mut self, protocol: Protocol, level: usize) -> Result<mhe::Share> {
        let all = self.everyone();
        self.rounds += 1;
        self.hub.gather(protocol, level, &all)
    }

    /// Collective key generation: CKG, RKG (two rounds) and RTG for `galois` (one round per
    /// element). Every party receives the public key's and RKG round 1's aggregates (it needs
    /// them); the rest stays with the coordinator.
    pub fn keygen(&mut self, galois: &[usize]) -> Result<CollectiveKeys> {
        let top = self.ctx.max_level();
        self.request_all(&[OP_CKG])?;
        self.rounds += 1;
        let ckg = self.hub.round(Protocol::Ckg, top)?;
        let public = mhe::ckg_finalize(&self.ctx, &self.crs, &ckg)?;
        self.request_all(&[OP_RKG])?;
        self.rounds += 1;
        let r1 = self.hub.round(Protocol::RkgRound1, top)?;
        let r2 = self.gather_all(Protocol::RkgRound2, top)?;
        let relin = mhe::rkg_finalize(&self.ctx, &r1, &r2)?;
        let mut req = vec![OP_RTG];
        req.extend_from_slice(&(galois.len() as u32).to_le_bytes());
        for &g in galois {
            Protocol::Rtg { galois: g }.validate(self.ctx.n())?;
            req.extend_from_slice(&(g as u64).to_le_bytes());
        }
        self.request_all(&req)?;
        let aggs = galois
            .iter()
            .map(|&g| self.gather_all(Protocol::Rtg { galois: g }, top))
            .collect::<Result<Vec<_>>>()?;
        let galois = mhe::rtg_finalize(&self.ctx, &self.crs, &aggs)?;
        Ok(CollectiveKeys {
            public,
            relin,
            galois,
        })
    }

    fn take_run(&mut self) -> u64 {
        let r = self.next_run;
        self.next_run += 1;
        r
    }

    /// Collective refresh of `ct` in a fresh run: the ciphertext back at the top level.
    pub fn refresh(&mut self, ct: &Ciphertext, params: &RefreshParams) -> Result<Ciphertext> {
        let run = self.take_run();
        Ok(self.refresh_runs(&[(ct, run)], params)?.remove(0))
    }

    /// Collective refresh of several ciphertexts, each in a fresh run, in one request (one
    /// exchange of messages for all of them).
    pub fn refresh_all(
        &mut self,
        cts: &[Ciphertext],
        params: &RefreshParams,
    ) -> Result<Vec<Ciphertext>> {
        let runs: Vec<(&Ciphertext, u64)> = cts.iter().map(|c| (c, self.take_run())).collect();
        self.refresh_runs(&runs, params)
    }

    /// Collective refresh of `ct` in run `run`; a run already used in this session is refused
    /// before anything is sent (a second answer for one common random polynomial can reveal
    /// shares).
    pub fn refresh_run(
        &mut self,
        ct: &Ciphertext,
        run: u64,
        params: &RefreshParams,
    ) -> Result<Ciphertext> {
        Ok(self.refresh_runs(&[(ct, run)], params)?.remove(0))
    }

    /// Appends the count, then per ciphertext its run and its length-prefixed bytes; each run
    /// must be fresh (see [`Self::fresh`]) and distinct.
    fn push_runs(
        &self,
        req: &mut Vec<u8>,
        runs: &[(&Ciphertext, u64)],
        protocol: fn(u64) -> Protocol,
    ) -> Result<()> {
        req.extend_from_slice(&(runs.len() as u32).to_le_bytes());
        for (i, &(ct, run)) in runs.iter().enumerate() {
            self.fresh(protocol(run))?;
            if runs[..i].iter().any(|&(_, r)| r == run) {
                return Err(Error::Multiparty(format!("run {run} twice in one request")));
            }
            let bytes = serialize::to_bytes(&self.ctx, ct, WriteOptions::default())?;
            req.extend_from_slice(&run.to_le_bytes());
            req.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            req.extend_from_slice(&bytes);
        }
        Ok(())
    }

    fn refresh_runs(
        &mut self,
        runs: &[(&Ciphertext, u64)],
        params: &RefreshParams,
    ) -> Result<Vec<Ciphertext>> {
        let mut req = vec![OP_REFRESH];
        req.extend_from_slice(&params.lambda.to_le_bytes());
        req.extend_from_slice(&params.message_log2.to_le_bytes());
        req.extend_from_slice(&(params.parties as u32).to_le_bytes());
        self.push_runs(&mut req, runs, |run| Protocol::Refresh { run })?;
        self.request_all(&req)?;
        runs.iter()
            .map(|&(ct, run)| {
                let agg = self.gather_all(Protocol::Refresh { run }, ct.level())?;
                mhe::refresh_finalize(&self.ctx, &self.crs, ct, &agg, run)
            })
            .collect()
    }

    fn fresh(&self, protocol: Protocol) -> Result<()> {
        protocol.validate(self.ctx.n())?;
        if self.hub.has_run(protocol) {
            return Err(Error::Multiparty(format!(
                "{protocol:?} was already run in this session; a second run would be a replay"
            )));
        }
        Ok(())
    }

    /// Collective decryption of `ct` to party `to` alone: the others send smudged decryption
    /// shares, the coordinator passes their sum to `to`, which adds its own part and returns
    /// what its [`PartyApp::plaintext`] publishes. The coordinator never sees the phase.
    pub fn decrypt_to(
        &mut self,
        ct: &Ciphertext,
        to: usize,
        smudging: &Smudging,
    ) -> Result<Vec<u8>> {
        let k = self.hub.parties();
        if to >= k || k < 2 {
            return Err(Error::Multiparty(format!(
                "decryption to party {to} of {k}: needs a party in range and at least one other"
            )));
        }
        let run = self.take_run();
        let protocol = Protocol::Cks { run };
        self.fresh(protocol)?;
        let mut req = vec![OP_DECRYPT];
        req.extend_from_slice(&run.to_le_bytes());
        req.extend_from_slice(&(to as u32).to_le_bytes());
        req.extend_from_slice(&smudging.bound_bits().to_le_bytes());
        req.extend_from_slice(&serialize::to_bytes(
            &self.ctx,
            ct,
            WriteOptions::default(),
        )?);
        self.request_all(&req)?;
        let others: Vec<usize> = (0..k).filter(|&i| i != to).collect();
        self.rounds += 1;
        let agg = self.hub.gather(protocol, ct.level(), &others)?;
        self.hub.send_aggregate(to, &agg)?;
        let out = self.hub.reply(to, "published plaintext")?;
        self.decryptions[to] += 1;
        Ok(out)
    }

    /// Collective re-encryption (PCKS) of `cts`, each in a fresh run, under a receiver's public
    /// key `pk` (any key set, e.g. a data owner's own): every party sends a smudged share, the
    /// coordinator finishes. Nobody sees a plaintext; only the holder of `pk`'s secret can
    /// decrypt the results.
    pub fn reencrypt_to(
        &mut self,
        cts: &[Ciphertext],
        pk: &PublicKey,
        smudging: &Smudging,
    ) -> Result<Vec<Ciphertext>> {
        let runs: Vec<(&Ciphertext, u64)> = cts.iter().map(|c| (c, self.take_run())).collect();
        let mut req = vec![OP_PCKS];
        req.extend_from_slice(&smudging.bound_bits().to_le_bytes());
        let pk_bytes = serialize::to_bytes(&self.ctx, pk, WriteOptions::default())?;
        req.extend_from_slice(&(pk_bytes.len() as u64).to_le_bytes());
        req.extend_from_slice(&pk_bytes);
        self.push_runs(&mut req, &runs, |run| Protocol::Pcks { run })?;
        self.request_all(&req)?;
        runs.iter()
            .map(|&(ct, run)| {
                let agg = self.gather_all(Protocol::Pcks { run }, ct.level())?;
                mhe::pcks_finalize(&self.ctx, ct, &agg, pk)
            })
            .collect()
    }

    /// Application jobs: `payloads[i]` to party `i` (all sent first, so the parties work in
    /// parallel), then each party's reply, in order.
    pub fn jobs(&mut self, payloads: &[Vec<u8>]) -> Result<Vec<Vec<u8>>> {
        if payloads.len() != self.hub.parties() {
            return Err(Error::Multiparty(format!(
                "{} job payloads for {} parties",
                payloads.len(),
                self.hub.parties()
            )));
        }
        for (i, p) in payloads.iter().enumerate() {
            let mut req = Vec::with_capacity(p.len() + 1);
            req.push(OP_JOB);
            req.extend_from_slice(p);
            self.hub.request(i, &req)?;
        }
        // Every reply is read, refusals too, so that one party's refusal leaves the session in
        // step; the first error is returned.
        let replies: Vec<Result<Vec<u8>>> = (0..payloads.len())
            .map(|i| self.hub.reply(i, "job result"))
            .collect();
        replies.into_iter().collect()
    }

    /// Ends the session: every party leaves its [`serve_party`] loop.
    pub fn finish(mut self) -> Result<()> {
        self.request_all(&[OP_BYE])
    }
}

/// What a party does besides the protocols.
pub trait PartyApp {
    /// An application request (e.g. "encrypt your data under the collective key"), with the
    /// collective public key once key generation has run. Returns the reply.
    fn job(&mut self, public: Option<&PublicKey>, payload: &[u8]) -> Result<Vec<u8>>;
    /// This party received the collective decryption of `ct` (`phase`: coefficient form, as
    /// [`mhe::decrypt_finalize`] returns it). Returns what it publishes to the coordinator.
    fn plaintext(&mut self, ct: &Ciphertext, phase: &PolyBatch) -> Result<Vec<u8>>;
}

/// A cursor over a request's fields.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        if self.0.len() < N {
            return Err(Error::Decode("request shorter than its fields".into()));
        }
        let (a, b) = self.0.split_at(N);
        self.0 = b;
        Ok(a.try_into().expect("N bytes"))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    fn bytes(&mut self, len: usize) -> Result<&'a [u8]> {
        let (a, b) = self
            .0
            .split_at_checked(len)
            .ok_or_else(|| Error::Decode("request shorter than its fields".into()))?;
        self.0 = b;
        Ok(a)
    }
    fn rest(self) -> &'a [u8] {
        self.0
    }
    fn len(&mut self) -> Result<usize> {
        usize::try_from(self.u64()?).map_err(|_| Error::Decode("field length".into()))
    }
    /// A run and its ciphertext, as [`Coordinator::push_runs`] writes them.
    fn run(&mut self, ctx: &RlweContext) -> Result<(u64, Ciphertext)> {
        let run = self.u64()?;
        let len = self.len()?;
        Ok((run, serialize::from_bytes(ctx, self.bytes(len)?)?))
    }
}

/// Serves the coordinator's requests with `party` until it ends the session. Requests that
/// fail (a refused replay, a malformed request, an application error) are answered with a
/// refusal and the loop goes on; a broken connection ends it with the error.
pub fn serve_party(link: &mut PartyLink, party: &mut Party, app: &mut dyn PartyApp) -> Result<()> {
    let mut public: Option<PublicKey> = None;
    loop {
        let req = link.next_request()?;
        match handle(link, party, app, &mut public, &req) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e @ (Error::Io(_) | Error::MissingParty(_) | Error::Protocol(_))) => return Err(e),
            Err(e) => link.refuse(&e.to_string())?,
        }
    }
}

/// One request; `Ok(true)` at the end of the session.
fn handle(
    link: &mut PartyLink,
    party: &mut Party,
    app: &mut dyn PartyApp,
    public: &mut Option<PublicKey>,
    req: &[u8],
) -> Result<bool> {
    let ctx = party.ctx.clone();
    let (&op, rest) = req
        .split_first()
        .ok_or_else(|| Error::Decode("empty request".into()))?;
    let mut f = Fields(rest);
    match op {
        OP_CKG => {
            let agg = link.exchange(&party.ckg_share()?)?;
            *public = Some(mhe::ckg_finalize(&ctx, &party.crs, &agg)?);
        }
        OP_RKG => {
            let r1 = link.exchange(&party.rkg_round1()?)?;
            link.send(&party.rkg_round2(&r1)?)?;
        }
        OP_RTG => {
            let count = f.u32()? as usize;
            if count > 2 * ctx.n() {
                return Err(Error::Decode(format!("{count} Galois elements requested")));
            }
            let els = (0..count)
                .map(|_| f.u64().map(|g| g as usize))
                .collect::<Result<Vec<_>>>()?;
            for g in els {
                link.send(&party.rtg_share(g)?)?;
            }
        }
        OP_REFRESH => {
            let params = RefreshParams {
                lambda: f.u32()?,
                message_log2: f64::from_le_bytes(f.take()?),
                parties: f.u32()? as usize,
            };
            for _ in 0..f.u32()? {
                let (run, ct) = f.run(&ctx)?;
                link.send(&party.refresh_share(&ct, run, &params)?)?;
            }
        }
        OP_PCKS => {
            let smudging = Smudging::bits(f.u32()?)?;
            let len = f.len()?;
            let pk: PublicKey = serialize::from_bytes(&ctx, f.bytes(len)?)?;
            for _ in 0..f.u32()? {
                let (run, ct) = f.run(&ctx)?;
                link.send(&party.pcks_share(&ct, &pk, &smudging, run)?)?;
            }
        }
        OP_DECRYPT => {
            let run = f.u64()?;
            let to = f.u32()?;
            let smudging = Smudging::bits(f.u32()?)?;
            let ct: Ciphertext = serialize::from_bytes(&ctx, f.rest())?;
            if to != link.index() {
                link.send(&party.cks_share(&ct, None, &smudging, run)?)?;
            } else {
                let others = link.receive(Protocol::Cks { run }, ct.level())?;
                let phase = party.decrypt_with(&ct, &others)?;
                link.reply(&app.plaintext(&ct, &phase)?)?;
            }
        }
        OP_JOB => link.reply(&app.job(public.as_ref(), f.rest())?)?,
        OP_BYE => return Ok(true),
        op => return Err(Error::Decode(format!("unknown request {op}"))),
    }
    Ok(false)
}
