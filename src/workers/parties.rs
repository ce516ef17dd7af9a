//! Multiparty protocol messages ([`crate::mhe::Share`]) over TCP, in the workers' frame format
//! (tag, u64 length, payload) with the serialized share (format v2: header, key set, CRC) as
//! payload. A star: each [`PartyLink`] connects to one [`CombinerHub`], sends its share of a
//! round, and receives the aggregate back. The hub checks every message and fails a round with
//! a typed error, never a hang:
//!
//! - a party that does not connect, stalls, or disconnects within the timeout:
//!   [`Error::MissingParty`];
//! - bytes that do not decode as a share: [`Error::Decode`] (or [`Error::Protocol`] for a bad
//!   frame);
//! - a share for another protocol, run or level, a second share from a party for one run, or a
//!   copy of a share already received: [`Error::Multiparty`];
//! - a party or share under other parameters or another key set: [`Error::ParameterMismatch`],
//!   [`Error::KeyMismatch`].
//!
//! Sockets are `std::net` (blocking, with read/write timeouts): one connection per party and
//! one message per round needs no async runtime. The hub learns only shares and aggregates,
//! which the protocols make public; a party's secret share never leaves its [`crate::mhe::Party`].

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{read_frame_rest, read_tag, write_frame};
use crate::error::{Error, Result};
use crate::mhe::{Crs, Protocol, Share};
use crate::rlwe::RlweContext;
use crate::serialize::{self, WriteOptions};

const HELLO: u8 = 0x21;
const SHARE: u8 = 0x22;
const AGGREGATE: u8 = 0x23;
/// Coordinator → party: what to do next ([`super::session`]).
pub(crate) const REQUEST: u8 = 0x24;
/// Party → coordinator: an answer that is not a share (a job's result, a published plaintext).
pub(crate) const REPLY: u8 = 0x25;
/// Party → coordinator: the party refuses the request (UTF-8 reason).
pub(crate) const REFUSED: u8 = 0x26;
/// Longest refusal reason read.
const REFUSED_BYTES: u64 = 1 << 16;
/// HELLO payload: party index (u32), parameter fingerprint (u64), key set (u64).
const HELLO_BYTES: u64 = 20;

/// How long to wait and how much to accept.
#[derive(Clone, Copy, Debug)]
pub struct NetConfig {
    /// Longest wait for a connection, or for the next message of a round.
    pub timeout: Duration,
    /// Largest share frame accepted (the parameters' largest share is far below the default).
    pub max_frame_bytes: u64,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            max_frame_bytes: 1 << 30,
        }
    }
}

/// Timeouts and disconnects become [`Error::MissingParty`]; other errors pass through.
fn missing(e: Error, who: &str, what: &str) -> Error {
    match e {
        Error::Io(io)
            if matches!(
                io.kind(),
                ErrorKind::WouldBlock
                    | ErrorKind::TimedOut
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
                    | ErrorKind::UnexpectedEof
            ) =>
        {
            Error::MissingParty(format!("{who}: no {what} ({io})"))
        }
        e => e,
    }
}

/// Reads one frame of `tag` (at most `bound` bytes); a refusal in its place is
/// [`Error::Multiparty`] with the peer's reason.
fn read_expected(s: &mut TcpStream, tag: u8, bound: u64, who: &str, what: &str) -> Result<Vec<u8>> {
    let got = read_tag(s)
        .map_err(|e| missing(e, who, what))?
        .ok_or_else(|| Error::MissingParty(format!("{who} disconnected before its {what}")))?;
    if got == REFUSED && tag != REFUSED {
        let why =
            read_frame_rest(s, got, Some(REFUSED_BYTES)).map_err(|e| missing(e, who, what))?;
        return Err(Error::Multiparty(format!(
            "{who} refused its {what}: {}",
            String::from_utf8_lossy(&why)
        )));
    }
    if got != tag {
        return Err(Error::Protocol(format!(
            "{who} sent frame tag {got:#04x} where its {what} ({tag:#04x}) was due"
        )));
    }
    read_frame_rest(s, tag, Some(bound)).map_err(|e| missing(e, who, what))
}

fn configure(s: &TcpStream, cfg: &NetConfig) -> Result<()> {
    s.set_read_timeout(Some(cfg.timeout))?;
    s.set_write_timeout(Some(cfg.timeout))?;
    s.set_nodelay(true)?;
    Ok(())
}

/// The combiner's end: one connection per party, indexed by party.
pub struct CombinerHub {
    ctx: Arc<RlweContext>,
    key_id: u64,
    peers: Vec<TcpStream>,
    cfg: NetConfig,
    /// Runs already aggregated (a second round of the same run is a replay).
    done: HashSet<Protocol>,
    /// Keyed digests of every share received, to refuse a copy of one.
    seen: HashSet<u64>,
    hasher: std::collections::hash_map::RandomState,
    /// Frame bytes received from / sent to each party.
    from_party: Vec<u64>,
    to_party: Vec<u64>,
    /// Every frame after [`Self::record_transcript`], both directions, as on the wire.
    transcript: Option<Vec<u8>>,
}

impl std::fmt::Debug for CombinerHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CombinerHub({} parties)", self.peers.len())
    }
}

impl CombinerHub {
    /// Waits for `parties` parties of the key set of `crs` to connect and introduce themselves
    /// (each index in `0..parties` once), at most `cfg.timeout` in all.
    ///
    /// Any connection that introduces itself wrongly fails the whole setup (a typed error):
    /// the run is among known parties, so a stranger on the port is an error, not noise to
    /// skip. The listener is polled (non-blocking) meanwhile and left blocking again.
    pub fn accept(
        listener: &TcpListener,
        ctx: Arc<RlweContext>,
        crs: &Crs,
        parties: usize,
        cfg: NetConfig,
    ) -> Result<Self> {
        listener.set_nonblocking(true)?;
        let hub = Self::accept_polling(listener, ctx, crs, parties, cfg);
        listener.set_nonblocking(false)?;
        hub
    }

    fn accept_polling(
        listener: &TcpListener,
        ctx: Arc<RlweContext>,
        crs: &Crs,
        parties: usize,
        cfg: NetConfig,
    ) -> Result<Self> {
        let deadline = Instant::now() + cfg.timeout;
        let mut slots: Vec<Option<TcpStream>> = (0..parties).map(|_| None).collect();
        let mut connected = 0;
        while connected < parties {
            let (mut s, peer) = match listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        let absent: Vec<usize> =
                            (0..parties).filter(|&i| slots[i].is_none()).collect();
                        return Err(Error::MissingParty(format!(
                            "parties {absent:?} did not connect within {:?}",
                            cfg.timeout
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            s.set_nonblocking(false)?;
            configure(&s, &cfg)?;
            let who = format!("the party at {peer}");
            let hello = read_expected(&mut s, HELLO, HELLO_BYTES, &who, "introduction")?;
            if hello.len() as u64 != HELLO_BYTES {
                return Err(Error::Protocol(format!(
                    "{who}: introduction of {} bytes",
                    hello.len()
                )));
            }
            let index = u32::from_le_bytes(hello[0..4].try_into().expect("4 bytes")) as usize;
            let fingerprint = u64::from_le_bytes(hello[4..12].try_into().expect("8 bytes"));
            let key_id = u64::from_le_bytes(hello[12..20].try_into().expect("8 bytes"));
            ctx.check_fingerprint(fingerprint, &format!("{who} (party {index})"))?;
            crate::rlwe::ciphertext::check_key_id(
                crs.key_id(),
                key_id,
                &format!("{who} (party {index})"),
            )?;
            match slots.get_mut(index) {
                Some(slot @ None) => *slot = Some(s),
                Some(Some(_)) => {
                    return Err(Error::Multiparty(format!(
                        "{who} claims index {index}, already connected"
                    )))
                }
                None => {
                    return Err(Error::Multiparty(format!(
                        "{who} claims index {index}; this run has {parties} parties"
                    )))
                }
            }
            connected += 1;
        }
        Ok(Self {
            ctx,
            key_id: crs.key_id(),
            peers: slots
                .into_iter()
                .map(|s| s.expect("all connected"))
                .collect(),
            cfg,
            done: HashSet::new(),
            seen: HashSet::new(),
            hasher: Default::default(),
            from_party: vec![9 + HELLO_BYTES; parties],
            to_party: vec![0; parties],
            transcript: None,
        })
    }

    /// Number of parties.
    pub fn parties(&self) -> usize {
        self.peers.len()
    }

    /// Frame bytes party `i` has sent to the hub (its introduction included).
    pub fn bytes_from(&self, i: usize) -> u64 {
        self.from_party.get(i).copied().unwrap_or(0)
    }

    /// Frame bytes the hub has sent to party `i`.
    pub fn bytes_to(&self, i: usize) -> u64 {
        self.to_party.get(i).copied().unwrap_or(0)
    }

    /// Keeps a copy of every later frame, in both directions (for tests that scan it).
    pub fn record_transcript(&mut self) {
        self.transcript.get_or_insert_with(Vec::new);
    }

    /// The frames recorded since [`Self::record_transcript`].
    pub fn transcript(&self) -> &[u8] {
        self.transcript.as_deref().unwrap_or(&[])
    }

    fn log(&mut self, tag: u8, payload: &[u8]) {
        if let Some(t) = self.transcript.as_mut() {
            t.push(tag);
            t.extend_from_slice(&(payload.len() as u64).to_le_bytes());
            t.extend_from_slice(payload);
        }
    }

    fn party(&self, i: usize) -> Result<()> {
        if i >= self.peers.len() {
            return Err(Error::Multiparty(format!(
                "no party {i}; this run has {}",
                self.peers.len()
            )));
        }
        Ok(())
    }

    /// Sends one frame to party `i`.
    pub(crate) fn write_to(&mut self, i: usize, tag: u8, payload: &[u8]) -> Result<()> {
        self.party(i)?;
        write_frame(&mut self.peers[i], tag, payload)
            .map_err(|e| missing(e, &format!("party {i}"), "request"))?;
        self.to_party[i] += 9 + payload.len() as u64;
        self.log(tag, payload);
        Ok(())
    }

    /// Reads one frame of `tag` from party `i` (a refusal is [`Error::Multiparty`]).
    pub(crate) fn read_from(&mut self, i: usize, tag: u8, what: &str) -> Result<Vec<u8>> {
        self.party(i)?;
        let bytes = read_expected(
            &mut self.peers[i],
            tag,
            self.cfg.max_frame_bytes,
            &format!("party {i}"),
            what,
        )?;
        self.from_party[i] += 9 + bytes.len() as u64;
        self.log(tag, &bytes);
        Ok(bytes)
    }

    /// Sends party `i` a request frame.
    pub(crate) fn request(&mut self, i: usize, payload: &[u8]) -> Result<()> {
        self.write_to(i, REQUEST, payload)
    }

    /// Party `i`'s reply to a request.
    pub(crate) fn reply(&mut self, i: usize, what: &str) -> Result<Vec<u8>> {
        self.read_from(i, REPLY, what)
    }

    /// Sends an aggregate to party `i` alone (e.g. the decryption shares of the others to the
    /// party that receives the plaintext).
    pub fn send_aggregate(&mut self, i: usize, agg: &Share) -> Result<()> {
        let bytes = serialize::to_bytes(&self.ctx, agg, WriteOptions::default())?;
        self.write_to(i, AGGREGATE, &bytes)
    }

    /// Whether `protocol` was already aggregated in this session.
    pub fn has_run(&self, protocol: Protocol) -> bool {
        self.done.contains(&protocol)
    }

    /// One round: a share for `protocol` at `level` from every party, checked, aggregated and
    /// sent back to all of them. Returns the aggregate. Parties are read in index order, each
    /// within `cfg.timeout`.
    pub fn round(&mut self, protocol: Protocol, level: usize) -> Result<Share> {
        let all: Vec<usize> = (0..self.peers.len()).collect();
        let agg = self.gather(protocol, level, &all)?;
        for i in all {
            self.send_aggregate(i, &agg)?;
        }
        Ok(agg)
    }

    /// A share for `protocol` at `level` from each party in `from`, checked and aggregated; no
    /// one is sent the aggregate (see [`Self::send_aggregate`]). A protocol run is gathered
    /// once per session.
    pub fn gather(&mut self, protocol: Protocol, level: usize, from: &[usize]) -> Result<Share> {
        if !self.done.insert(protocol) {
            return Err(Error::Multiparty(format!(
                "{protocol:?} was already run with these parties; a second round would be a replay"
            )));
        }
        let mut shares = Vec::with_capacity(from.len());
        for &i in from {
            let who = format!("party {i}");
            let bytes = self.read_from(i, SHARE, &format!("{protocol:?} share"))?;
            let mut h = self.hasher.build_hasher();
            h.write(&bytes);
            if !self.seen.insert(h.finish()) {
                return Err(Error::Multiparty(format!(
                    "{who} sent a copy of a share already received (replay)"
                )));
            }
            let share: Share = serialize::from_bytes(&self.ctx, &bytes)?;
            if share.protocol() != protocol || share.level() != level {
                return Err(Error::Multiparty(format!(
                    "{who} sent a share for {:?} at level {}, this round is {protocol:?} at level {level}",
                    share.protocol(),
                    share.level()
                )));
            }
            crate::rlwe::ciphertext::check_key_id(self.key_id, share.key_id(), &who)?;
            shares.push(share);
        }
        crate::mhe::aggregate(&self.ctx, &shares)
    }
}

/// A party's end of the connection to the hub.
pub struct PartyLink {
    ctx: Arc<RlweContext>,
    stream: TcpStream,
    cfg: NetConfig,
    index: u32,
}

impl std::fmt::Debug for PartyLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PartyLink({:?})", self.stream.peer_addr().ok())
    }
}

impl PartyLink {
    /// Connects to the hub as party `index` of the key set of `crs`.
    pub fn connect(
        addr: SocketAddr,
        ctx: Arc<RlweContext>,
        crs: &Crs,
        index: u32,
        cfg: NetConfig,
    ) -> Result<Self> {
        let mut stream = TcpStream::connect_timeout(&addr, cfg.timeout)
            .map_err(|e| missing(e.into(), "the combiner", "connection"))?;
        configure(&stream, &cfg)?;
        let mut hello = Vec::with_capacity(HELLO_BYTES as usize);
        hello.extend_from_slice(&index.to_le_bytes());
        hello.extend_from_slice(&ctx.fingerprint().to_le_bytes());
        hello.extend_from_slice(&crs.key_id().to_le_bytes());
        write_frame(&mut stream, HELLO, &hello)?;
        Ok(Self {
            ctx,
            stream,
            cfg,
            index,
        })
    }

    /// This party's index in the session.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Sends this party's share of the current round.
    pub fn send(&mut self, share: &Share) -> Result<()> {
        let bytes = serialize::to_bytes(&self.ctx, share, WriteOptions::default())?;
        write_frame(&mut self.stream, SHARE, &bytes)
            .map_err(|e| missing(e, "the combiner", "acknowledgement"))
    }

    /// Receives the round's aggregate, which must answer `protocol` at `level`.
    pub fn receive(&mut self, protocol: Protocol, level: usize) -> Result<Share> {
        let bytes = read_expected(
            &mut self.stream,
            AGGREGATE,
            self.cfg.max_frame_bytes,
            "the combiner",
            &format!("{protocol:?} aggregate"),
        )?;
        let agg: Share = serialize::from_bytes(&self.ctx, &bytes)?;
        if agg.protocol() != protocol || agg.level() != level {
            return Err(Error::Multiparty(format!(
                "the combiner sent an aggregate for {:?} at level {}, expected {protocol:?} at level {level}",
                agg.protocol(),
                agg.level()
            )));
        }
        Ok(agg)
    }

    /// The next request from the coordinator (waits up to the timeout).
    pub(crate) fn next_request(&mut self) -> Result<Vec<u8>> {
        read_expected(
            &mut self.stream,
            REQUEST,
            self.cfg.max_frame_bytes,
            "the coordinator",
            "next request",
        )
    }

    /// Answers a request with bytes that are not a share.
    pub(crate) fn reply(&mut self, bytes: &[u8]) -> Result<()> {
        write_frame(&mut self.stream, REPLY, bytes)
    }

    /// Refuses the current request, with the reason.
    pub(crate) fn refuse(&mut self, why: &str) -> Result<()> {
        let mut why = why.as_bytes();
        why = &why[..why.len().min(REFUSED_BYTES as usize)];
        write_frame(&mut self.stream, REFUSED, why)
    }

    /// Sends a share and returns the round's aggregate.
    pub fn exchange(&mut self, share: &Share) -> Result<Share> {
        self.send(share)?;
        self.receive(share.protocol(), share.level())
    }
}
