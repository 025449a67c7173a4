//! A linearizability checker for histories of concurrent client operations.
//!
//! The chaos suite records what its clients asked ([`History::call`]) and
//! what they were told ([`History::ret`]) while faults hit the system, then
//! asks [`check`] whether some sequential order of the operations, each
//! taking effect at one instant between its call and its return, explains
//! every acknowledged answer under a sequential [`Model`].
//!
//! The search follows porcupine (Anish Athalye's Go checker): the algorithm
//! of Wing and Gong with Lowe's just-in-time linearization, over a doubly
//! linked list of call and return entries sorted by time, with a cache of
//! (set of linearized operations, model state) pairs already explored. The
//! history is split by key and every key is checked on its own
//! (P-compositionality): a store whose keys are independent objects is
//! linearizable if and only if each key's sub-history is.
//!
//! Two extensions over porcupine:
//! - Operations with an unknown outcome (the client timed out, the
//!   connection dropped) have no return: they may take effect at any time
//!   after their call, or never. Their return sits at +infinity, the
//!   model's [`Model::step`] returns every state the operation may lead to
//!   if it takes effect, and the search is done once every acknowledged
//!   operation is placed: open ones left over never took effect.
//! - [`Model::step`] may therefore return several successor states; on
//!   backtracking the search retries the same operation, and the cache
//!   steers it to the successors not yet explored.
//!
//! Operations that failed and definitely had no effect (a fail-fast "no
//! quorum" error the server guarantees was not applied, a request refused
//! before it was sent) are dropped with [`History::discard`]: an operation
//! that changes nothing and tells nothing can be linearized anywhere, so
//! leaving it out is exact. A `412 Precondition Failed` is different: it
//! says the version did not match at some instant, so it is recorded as
//! [`StoreOutput::Conflict`] and checked.
//!
//! The checker is pure: no clocks, no randomness, no threads. Time is
//! whatever `u64` the caller records (simulated nanoseconds in the chaos
//! suite); only its order matters. Work is bounded by a step budget, so a
//! pathological history ends in [`CheckResult::Timeout`], not a hang.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashSet};
use std::fmt::{self, Debug, Write as _};
use std::hash::{BuildHasherDefault, Hash};

/// A sequential specification of one object (one key of a store).
pub trait Model {
    /// The object's state. Equal states must behave alike: the search
    /// prunes on it.
    type State: Clone + Eq + Hash + Debug;
    /// What a client asks.
    type Input: Debug;
    /// What a client is told.
    type Output: Debug;

    /// The state before any operation.
    fn init() -> Self::State;

    /// Every state `input` may lead to from `state` when the client was
    /// told `output`; empty if `output` is impossible from `state`.
    ///
    /// For an output that [`Model::is_unknown`] (the operation may or may
    /// not have taken effect, with any result), this must include every
    /// state the operation can produce when it takes effect. "No effect" is
    /// always allowed by the checker (the operation stays open forever), so
    /// `state` itself may be left out; it is ignored if present.
    fn step(state: &Self::State, input: &Self::Input, output: &Self::Output) -> Vec<Self::State>;

    /// The output of an operation whose outcome is unknown: what the
    /// checker passes to [`Model::step`] for operations never returned.
    fn unknown() -> Self::Output;

    /// Whether `output` says the outcome is unknown (a timeout, a dropped
    /// connection). Such an operation stays open until +infinity.
    fn is_unknown(output: &Self::Output) -> bool;

    /// Whether `input` never changes the state. A read-only operation with
    /// an unknown outcome tells nothing and is dropped before the search.
    fn is_read_only(_input: &Self::Input) -> bool {
        false
    }
}

/// Identifies one recorded operation; it is its index in the history, and
/// the explanations of [`CheckResult::Illegal`] use it (`#12`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub usize);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Why a [`History`] refused a record. Each one is a bug in the recorder,
/// not in the system under test.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// The history already holds its maximum number of operations.
    #[error("history full: at most {max_ops} operations")]
    Full {
        /// The configured maximum.
        max_ops: usize,
    },
    /// No operation has this id.
    #[error("no operation {0}")]
    NoSuchOp(OpId),
    /// The operation already returned or was discarded.
    #[error("operation {0} already returned or discarded")]
    AlreadyClosed(OpId),
    /// The return is earlier than the call.
    #[error("operation {id} returns at {ret_ns} ns, before its call at {call_ns} ns")]
    ReturnBeforeCall {
        /// The operation.
        id: OpId,
        /// When it was called.
        call_ns: u64,
        /// The return time given.
        ret_ns: u64,
    },
}

/// How a recorded operation ended.
enum Outcome<O> {
    /// No return recorded (yet): open until +infinity.
    Open,
    /// Returned with an unknown outcome: open until +infinity.
    Unknown,
    /// The client was told `output` at `ret_ns`.
    Returned { output: O, ret_ns: u64 },
    /// Failed with no effect: left out of the check.
    Discarded,
}

/// One recorded operation.
struct Op<M: Model, K> {
    client: u64,
    key: K,
    input: M::Input,
    call_ns: u64,
    outcome: Outcome<M::Output>,
}

/// A bounded record of concurrent operations on keys of type `K`.
pub struct History<M: Model, K> {
    ops: Vec<Op<M, K>>,
    max_ops: usize,
}

impl<M: Model, K: Ord + Clone + Debug> History<M, K> {
    /// An empty history that refuses operations beyond `max_ops`.
    pub fn new(max_ops: usize) -> Self {
        assert!(max_ops > 0, "a history must hold at least one operation");
        Self {
            ops: Vec::new(),
            max_ops,
        }
    }

    /// Records that `client` asked `input` on `key` at `at_ns`. Until
    /// [`History::ret`] is called for it, the outcome is unknown.
    pub fn call(
        &mut self,
        client: u64,
        key: K,
        input: M::Input,
        at_ns: u64,
    ) -> Result<OpId, HistoryError> {
        if self.ops.len() >= self.max_ops {
            return Err(HistoryError::Full {
                max_ops: self.max_ops,
            });
        }
        self.ops.push(Op {
            client,
            key,
            input,
            call_ns: at_ns,
            outcome: Outcome::Open,
        });
        Ok(OpId(self.ops.len() - 1))
    }

    /// Records that operation `id` was answered `output` at `at_ns`. An
    /// output that [`Model::is_unknown`] leaves the operation open.
    pub fn ret(&mut self, id: OpId, output: M::Output, at_ns: u64) -> Result<(), HistoryError> {
        let op = self.open_op(id)?;
        if at_ns < op.call_ns {
            return Err(HistoryError::ReturnBeforeCall {
                id,
                call_ns: op.call_ns,
                ret_ns: at_ns,
            });
        }
        op.outcome = if M::is_unknown(&output) {
            Outcome::Unknown
        } else {
            Outcome::Returned {
                output,
                ret_ns: at_ns,
            }
        };
        Ok(())
    }

    /// Records that operation `id` failed and definitely had no effect
    /// (for example a fail-fast "no quorum" error): it is left out of the
    /// check. Do not use this for an answer that carries information, such
    /// as a failed If-Match.
    pub fn discard(&mut self, id: OpId) -> Result<(), HistoryError> {
        self.open_op(id)?.outcome = Outcome::Discarded;
        Ok(())
    }

    /// Number of operations recorded, discarded ones included.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn open_op(&mut self, id: OpId) -> Result<&mut Op<M, K>, HistoryError> {
        let op = self.ops.get_mut(id.0).ok_or(HistoryError::NoSuchOp(id))?;
        if !matches!(op.outcome, Outcome::Open) {
            return Err(HistoryError::AlreadyClosed(id));
        }
        Ok(op)
    }
}

impl<M: Model, K: Debug> Debug for History<M, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("History")
            .field("ops", &self.ops.len())
            .field("max_ops", &self.max_ops)
            .finish()
    }
}

/// The verdict of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult<K> {
    /// Every key's history is linearizable.
    Ok,
    /// The history of `key` is not linearizable.
    Illegal {
        /// The first key found with no linearization.
        key: K,
        /// The longest linearizable prefix found, the model state after it
        /// and the operation that could not be placed, for a human.
        explanation: String,
    },
    /// The step budget ran out while checking `key`; no key checked
    /// before it was illegal.
    Timeout {
        /// The key being checked when the budget ran out.
        key: K,
        /// Steps spent in total.
        steps: u64,
    },
}

impl<K> CheckResult<K> {
    /// Whether the history is linearizable.
    pub fn is_ok(&self) -> bool {
        matches!(self, CheckResult::Ok)
    }
}

/// Checks whether `history` is linearizable, spending at most `max_steps`
/// search steps over all keys together (one step is one attempt to place
/// or take back an operation; about a microsecond in a debug build).
///
/// Keys are checked smallest history first, so that a cheap illegal key is
/// found before an expensive one spends the budget.
pub fn check<M: Model, K: Ord + Clone + Debug>(
    history: &History<M, K>,
    max_steps: u64,
) -> CheckResult<K> {
    let mut by_key: BTreeMap<&K, Vec<OpId>> = BTreeMap::new();
    for (index, op) in history.ops.iter().enumerate() {
        let dropped = match &op.outcome {
            Outcome::Discarded => true,
            Outcome::Open | Outcome::Unknown => M::is_read_only(&op.input),
            Outcome::Returned { .. } => false,
        };
        if !dropped {
            by_key.entry(&op.key).or_default().push(OpId(index));
        }
    }
    let mut partitions: Vec<(&K, Vec<OpId>)> = by_key.into_iter().collect();
    partitions.sort_by_key(|(_, ops)| ops.len());

    let unknown = M::unknown();
    let mut steps = 0u64;
    for (key, ids) in partitions {
        let partition = Partition::<M, K> {
            history,
            ids: &ids,
            unknown: &unknown,
        };
        match partition.search(&mut steps, max_steps) {
            Verdict::Linearizable => {}
            Verdict::Illegal(explanation) => {
                return CheckResult::Illegal {
                    key: key.clone(),
                    explanation: format!("key {key:?}: {explanation}"),
                }
            }
            Verdict::OutOfSteps => {
                return CheckResult::Timeout {
                    key: key.clone(),
                    steps,
                }
            }
        }
    }
    CheckResult::Ok
}

/// Marks the end of the linked list.
const NIL: usize = usize::MAX;
/// The list's sentinel head entry.
const HEAD: usize = 0;
/// Most prefix operations and candidates an explanation lists.
const EXPLAIN_MAX_LINES: usize = 12;

/// SipHash with fixed keys: deterministic, and no OS randomness in the
/// simulation.
type FixedHasher = BuildHasherDefault<DefaultHasher>;

/// One key's operations, numbered 0.. in `ids` order.
struct Partition<'a, M: Model, K> {
    history: &'a History<M, K>,
    ids: &'a [OpId],
    unknown: &'a M::Output,
}

enum Verdict {
    Linearizable,
    Illegal(String),
    OutOfSteps,
}

/// A call or return in the linked list.
#[derive(Clone, Copy)]
struct Entry {
    /// Index into the partition's operations.
    op: usize,
    /// For a call, the index of its return entry; `NIL` for a return.
    ret: usize,
}

/// The deepest dead end the search met, kept to explain an illegal history.
struct DeadEnd<S> {
    /// Operations placed, in order.
    prefix: Vec<usize>,
    /// The model state after them.
    state: S,
    /// The operation whose return came next and that could not be placed.
    blocked: usize,
    /// Operations that could have been placed next (calls before that return).
    candidates: Vec<usize>,
}

/// A set of operations, as the search's cache key.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bitset(Vec<u64>);

impl Bitset {
    fn new(len: usize) -> Self {
        Self(vec![0; len.div_ceil(64)])
    }

    fn set(&mut self, bit: usize) {
        self.0[bit / 64] |= 1 << (bit % 64);
    }

    fn clear(&mut self, bit: usize) {
        self.0[bit / 64] &= !(1 << (bit % 64));
    }
}

impl<M: Model, K> Partition<'_, M, K> {
    fn op(&self, op: usize) -> &Op<M, K> {
        &self.history.ops[self.ids[op].0]
    }

    fn output(&self, op: usize) -> &M::Output {
        match &self.op(op).outcome {
            Outcome::Returned { output, .. } => output,
            Outcome::Open | Outcome::Unknown | Outcome::Discarded => self.unknown,
        }
    }

    fn ret_ns(&self, op: usize) -> Option<u64> {
        match &self.op(op).outcome {
            Outcome::Returned { ret_ns, .. } => Some(*ret_ns),
            Outcome::Open | Outcome::Unknown | Outcome::Discarded => None,
        }
    }

    /// The entries in time order behind the sentinel at `HEAD`, with each
    /// call pointing at its return. At equal times calls come first, so
    /// operations that touch at an instant count as concurrent. Open
    /// operations return at +infinity.
    fn entries(&self) -> Vec<Entry> {
        // (time, is_return, is_open, op): calls before returns at one
        // instant, and open returns after every acknowledged one.
        let mut events: Vec<(u64, bool, bool, usize)> = Vec::with_capacity(2 * self.ids.len());
        for op in 0..self.ids.len() {
            let ret_ns = self.ret_ns(op);
            events.push((self.op(op).call_ns, false, false, op));
            events.push((ret_ns.unwrap_or(u64::MAX), true, ret_ns.is_none(), op));
        }
        events.sort_unstable();
        let mut entries = vec![Entry { op: NIL, ret: NIL }; events.len() + 1];
        let mut ret_of = vec![NIL; self.ids.len()];
        for (index, &(_, is_return, _, op)) in events.iter().enumerate().rev() {
            let slot = index + 1;
            if is_return {
                ret_of[op] = slot;
                entries[slot] = Entry { op, ret: NIL };
            } else {
                debug_assert_ne!(ret_of[op], NIL, "a call sorts before its return");
                entries[slot] = Entry {
                    op,
                    ret: ret_of[op],
                };
            }
        }
        entries
    }

    /// Wing & Gong / Lowe search over this partition, counting steps into
    /// `steps` and stopping when they pass `max_steps`.
    ///
    /// An open operation (unknown outcome) is placed only where it changes
    /// the state: one that never took effect just stays open, and the
    /// search succeeds once every acknowledged operation is placed. Placing
    /// it as a no-op instead would only multiply equivalent configurations.
    fn search(&self, steps: &mut u64, max_steps: u64) -> Verdict {
        let entries = self.entries();
        let len = entries.len();
        let mut next: Vec<usize> = (1..=len).map(|i| if i == len { NIL } else { i }).collect();
        let mut prev: Vec<usize> = (0..len).map(|i| i.wrapping_sub(1)).collect();
        prev[HEAD] = NIL;

        let mut linearized = Bitset::new(self.ids.len());
        let mut cache: HashSet<(Bitset, M::State), FixedHasher> = HashSet::default();
        // The operations placed so far, each with the state before it.
        let mut placed: Vec<(usize, M::State)> = Vec::with_capacity(self.ids.len());
        let mut state = M::init();
        let mut dead_end: Option<DeadEnd<M::State>> = None;
        let mut entry = next[HEAD];
        let mut acknowledged_left = (0..self.ids.len())
            .filter(|&op| self.ret_ns(op).is_some())
            .count();

        while acknowledged_left > 0 {
            *steps += 1;
            if *steps > max_steps {
                return Verdict::OutOfSteps;
            }
            debug_assert_ne!(entry, NIL, "an acknowledged return is ahead");
            let Entry { op, ret } = entries[entry];
            if ret != NIL {
                // A call: place its operation now if the model allows an
                // outcome not explored from here already.
                let open = self.ret_ns(op).is_none();
                let successors = M::step(&state, &self.op(op).input, self.output(op));
                let mut moved = false;
                for successor in successors {
                    if open && successor == state {
                        continue;
                    }
                    let mut key = linearized.clone();
                    key.set(op);
                    if cache.insert((key, successor.clone())) {
                        placed.push((entry, std::mem::replace(&mut state, successor)));
                        linearized.set(op);
                        acknowledged_left -= usize::from(!open);
                        lift(&mut next, &mut prev, entry, ret);
                        entry = next[HEAD];
                        moved = true;
                        break;
                    }
                }
                if !moved {
                    entry = next[entry];
                }
            } else {
                // A return: its operation had to be placed by now. Take
                // back the last placement and retry that same operation,
                // so that its other outcomes get their turn.
                debug_assert!(self.ret_ns(op).is_some(), "open returns come last");
                if dead_end
                    .as_ref()
                    .is_none_or(|d| placed.len() > d.prefix.len())
                {
                    dead_end = Some(self.dead_end(&entries, &next, &placed, &state, op));
                }
                let Some((call, before)) = placed.pop() else {
                    let dead_end = dead_end.expect("recorded just above");
                    return Verdict::Illegal(self.explain(&dead_end));
                };
                state = before;
                linearized.clear(entries[call].op);
                acknowledged_left += usize::from(self.ret_ns(entries[call].op).is_some());
                unlift(&mut next, &mut prev, call, entries[call].ret);
                entry = call;
            }
        }
        Verdict::Linearizable
    }

    fn dead_end(
        &self,
        entries: &[Entry],
        next: &[usize],
        placed: &[(usize, M::State)],
        state: &M::State,
        blocked: usize,
    ) -> DeadEnd<M::State> {
        let mut candidates = Vec::new();
        let mut at = next[HEAD];
        while at != NIL && entries[at].ret != NIL {
            candidates.push(entries[at].op);
            at = next[at];
        }
        DeadEnd {
            prefix: placed.iter().map(|&(call, _)| entries[call].op).collect(),
            state: state.clone(),
            blocked,
            candidates,
        }
    }

    fn explain(&self, dead_end: &DeadEnd<M::State>) -> String {
        let mut text = format!(
            "not linearizable ({} operations). Longest linearizable prefix: {} operations",
            self.ids.len(),
            dead_end.prefix.len()
        );
        let skipped = dead_end.prefix.len().saturating_sub(EXPLAIN_MAX_LINES);
        if skipped > 0 {
            let _ = write!(text, " ({skipped} earlier ones not shown)");
        }
        text.push(':');
        for &op in &dead_end.prefix[skipped..] {
            let _ = write!(text, "\n  {}", self.describe(op));
        }
        let _ = write!(
            text,
            "\nstate then: {:?}\nno outcome allowed by the model fits {}, which had to be placed next:\n  {}",
            dead_end.state,
            self.ids[dead_end.blocked],
            self.describe(dead_end.blocked)
        );
        let others: Vec<usize> = dead_end
            .candidates
            .iter()
            .copied()
            .filter(|&op| op != dead_end.blocked)
            .collect();
        if !others.is_empty() {
            text.push_str("\nnor does placing any of these before it lead anywhere:");
            for &op in others.iter().take(EXPLAIN_MAX_LINES) {
                let _ = write!(text, "\n  {}", self.describe(op));
            }
            if others.len() > EXPLAIN_MAX_LINES {
                let _ = write!(
                    text,
                    "\n  ... and {} more",
                    others.len() - EXPLAIN_MAX_LINES
                );
            }
        }
        text
    }

    fn describe(&self, op: usize) -> String {
        let record = self.op(op);
        let ret = match self.ret_ns(op) {
            Some(ns) => ns.to_string(),
            None => "open".to_string(),
        };
        format!(
            "{} client {} [{}, {}] {:?} -> {:?}",
            self.ids[op],
            record.client,
            record.call_ns,
            ret,
            record.input,
            self.output(op)
        )
    }
}

/// Unlinks a call entry and its return.
fn lift(next: &mut [usize], prev: &mut [usize], call: usize, ret: usize) {
    for at in [call, ret] {
        next[prev[at]] = next[at];
        if next[at] != NIL {
            prev[next[at]] = prev[at];
        }
    }
}

/// Links back a call entry and its return, undoing the matching `lift`.
fn unlift(next: &mut [usize], prev: &mut [usize], call: usize, ret: usize) {
    for at in [ret, call] {
        next[prev[at]] = at;
        if next[at] != NIL {
            prev[next[at]] = at;
        }
    }
}

/// The version of a stored object as far as the history tells.
///
/// A version produced by an operation whose outcome is unknown was never
/// shown to anyone; it is kept as the set of values it may still have.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Version {
    /// A version some client was told.
    Seen(u64),
    /// Any version at least `at_least`, except those in `not` (sorted, each
    /// above `at_least`): an unseen version that failed some If-Matches.
    Unseen {
        /// The smallest value it may have.
        at_least: u64,
        /// Values ruled out by a `Conflict`.
        not: Vec<u64>,
    },
}

impl Version {
    /// Any version at least `at_least`.
    fn at_least(at_least: u64) -> Self {
        Version::Unseen {
            at_least,
            not: Vec::new(),
        }
    }

    /// Whether the version may be `version`.
    fn may_be(&self, version: u64) -> bool {
        match self {
            Version::Seen(seen) => *seen == version,
            Version::Unseen { at_least, not } => {
                version >= *at_least && not.binary_search(&version).is_err()
            }
        }
    }

    /// The smallest value the version may have.
    fn min(&self) -> u64 {
        match self {
            Version::Seen(seen) => *seen,
            // `not` holds no `at_least` and is sorted, so this is the first
            // gap after `at_least`.
            Version::Unseen { at_least, .. } => *at_least,
        }
    }

    /// The version once known not to be `version`; `None` if it must be.
    fn other_than(&self, version: u64) -> Option<Version> {
        match self {
            Version::Seen(seen) => (*seen != version).then(|| self.clone()),
            Version::Unseen { at_least, not } => {
                if version < *at_least {
                    return Some(self.clone());
                }
                let mut not = not.clone();
                if let Err(at) = not.binary_search(&version) {
                    not.insert(at, version);
                }
                // Keep the form canonical (cache hits): `at_least` itself
                // is never ruled out.
                let mut at_least = *at_least;
                while not.first() == Some(&at_least) {
                    not.remove(0);
                    at_least = at_least.checked_add(1)?;
                }
                Some(Version::Unseen { at_least, not })
            }
        }
    }
}

/// A stored object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Object {
    /// Its value.
    pub value: u64,
    /// Its version.
    pub version: Version,
}

/// What a client asks the object store about one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreInput {
    /// Read the object.
    Get,
    /// Write `value`; with `if_version`, only if the current version is
    /// that one (If-Match).
    Put {
        /// The value to store.
        value: u64,
        /// The version the object must have (If-Match).
        if_version: Option<u64>,
    },
    /// Delete the object; with `if_version`, only if the current version is
    /// that one (If-Match).
    Delete {
        /// The version the object must have (If-Match).
        if_version: Option<u64>,
    },
}

/// What the object store answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutput {
    /// The object read: `(value, version)`, or `None` if absent (HTTP 404
    /// on a read).
    Got(Option<(u64, u64)>),
    /// The write took effect; the object now has this version.
    Put {
        /// The new version.
        version: u64,
    },
    /// The delete took effect.
    Deleted,
    /// Delete of an absent key.
    NotFound,
    /// If-Match failed (HTTP 412); nothing changed.
    Conflict,
    /// No answer (timeout, connection dropped, 5xx after sending): the
    /// operation may have taken effect at any time after its call, or not.
    Unknown,
}

/// The Controller's object store, one key at a time.
///
/// The state is `None` (absent) or the object. The rules:
/// - A put's new version must be greater than the version it replaces; any
///   such value is accepted. After a delete the key is absent and a new
///   object may start at any version (versions of a deleted object are not
///   remembered).
/// - If-Match on a present object succeeds exactly when the version is the
///   one given. On an absent key a conditional put fails with `Conflict`;
///   a conditional delete may answer `NotFound` or `Conflict` (both are
///   reasonable readings of HTTP; either is accepted).
/// - An unknown outcome may be any of the above, or no effect. A failed
///   If-Match with an unknown outcome is treated as no effect: that is more
///   permissive than remembering the failure, so nothing legal is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectStore;

impl ObjectStore {
    fn get(state: &Option<Object>, output: &StoreOutput) -> Vec<Option<Object>> {
        match (state, output) {
            (None, StoreOutput::Got(None)) => vec![None],
            (Some(object), StoreOutput::Got(Some((value, version))))
                if object.value == *value && object.version.may_be(*version) =>
            {
                vec![Some(Object {
                    value: *value,
                    version: Version::Seen(*version),
                })]
            }
            // A read changes nothing, whether it ran or not.
            _ => Vec::new(),
        }
    }

    fn put(
        state: &Option<Object>,
        value: u64,
        if_version: Option<u64>,
        output: &StoreOutput,
    ) -> Vec<Option<Object>> {
        // Whether the If-Match (if any) may hold.
        let current = state.as_ref().map(|object| &object.version);
        // The Controller's If-Match: version 0 means "only if absent"
        // (object versions start at 1).
        let matches = match (if_version, current) {
            (None, _) => true,
            (Some(wanted), None) => wanted == 0,
            (Some(0), Some(_)) => false,
            (Some(wanted), Some(version)) => version.may_be(wanted),
        };
        // The smallest version the new object may get.
        let floor = match (if_version, current) {
            (Some(wanted), _) => wanted.checked_add(1),
            (None, Some(version)) => version.min().checked_add(1),
            (None, None) => Some(0),
        };
        let written = |version: Version| Some(Object { value, version });
        match output {
            StoreOutput::Put { version }
                if matches && floor.is_some_and(|floor| *version >= floor) =>
            {
                vec![written(Version::Seen(*version))]
            }
            StoreOutput::Conflict => Self::conflict(state, if_version),
            // If it took effect: a new version nobody has seen yet.
            StoreOutput::Unknown => match floor {
                Some(floor) if matches => vec![written(Version::at_least(floor))],
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    fn delete(
        state: &Option<Object>,
        if_version: Option<u64>,
        output: &StoreOutput,
    ) -> Vec<Option<Object>> {
        let matches = match (if_version, state) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(wanted), Some(object)) => object.version.may_be(wanted),
        };
        match output {
            StoreOutput::Deleted if matches => vec![None],
            StoreOutput::NotFound if state.is_none() => vec![None],
            StoreOutput::Conflict => Self::conflict(state, if_version),
            StoreOutput::Unknown if matches => vec![None],
            _ => Vec::new(),
        }
    }

    /// A failed If-Match on `if_version`: nothing changes, but the version
    /// then was another one.
    fn conflict(state: &Option<Object>, if_version: Option<u64>) -> Vec<Option<Object>> {
        match (if_version, state) {
            (None, _) => Vec::new(),
            // Create-only conflicts only with an existing object.
            (Some(0), None) => Vec::new(),
            (Some(0), Some(_)) => vec![state.clone()],
            (Some(_), None) => vec![None],
            (Some(wanted), Some(object)) => object
                .version
                .other_than(wanted)
                .map(|version| {
                    vec![Some(Object {
                        value: object.value,
                        version,
                    })]
                })
                .unwrap_or_default(),
        }
    }
}

impl Model for ObjectStore {
    type State = Option<Object>;
    type Input = StoreInput;
    type Output = StoreOutput;

    fn init() -> Self::State {
        None
    }

    fn step(state: &Self::State, input: &Self::Input, output: &Self::Output) -> Vec<Self::State> {
        match *input {
            StoreInput::Get => Self::get(state, output),
            StoreInput::Put { value, if_version } => Self::put(state, value, if_version, output),
            StoreInput::Delete { if_version } => Self::delete(state, if_version, output),
        }
    }

    fn unknown() -> Self::Output {
        StoreOutput::Unknown
    }

    fn is_unknown(output: &Self::Output) -> bool {
        matches!(output, StoreOutput::Unknown)
    }

    fn is_read_only(input: &Self::Input) -> bool {
        matches!(input, StoreInput::Get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use StoreInput as In;
    use StoreOutput as Out;

    type Store = History<ObjectStore, &'static str>;

    /// Generous: every hand-written history below needs far fewer steps.
    const STEPS: u64 = 100_000;

    fn put(value: u64) -> In {
        In::Put {
            value,
            if_version: None,
        }
    }

    fn put_if(value: u64, version: u64) -> In {
        In::Put {
            value,
            if_version: Some(version),
        }
    }

    fn put_ok(version: u64) -> Out {
        Out::Put { version }
    }

    /// Records an operation on key "a"; `ret: None` leaves it open.
    fn op(
        history: &mut Store,
        client: u64,
        input: In,
        call_ns: u64,
        ret: Option<(Out, u64)>,
    ) -> OpId {
        op_on(history, "a", client, input, call_ns, ret)
    }

    fn op_on(
        history: &mut Store,
        key: &'static str,
        client: u64,
        input: In,
        call_ns: u64,
        ret: Option<(Out, u64)>,
    ) -> OpId {
        let id = history.call(client, key, input, call_ns).unwrap();
        if let Some((output, ret_ns)) = ret {
            history.ret(id, output, ret_ns).unwrap();
        }
        id
    }

    fn assert_illegal(history: &Store) -> String {
        match check(history, STEPS) {
            CheckResult::Illegal { key, explanation } => {
                assert!(
                    explanation.starts_with(&format!("key {key:?}")),
                    "{explanation}"
                );
                explanation
            }
            other => panic!("expected Illegal, got {other:?}"),
        }
    }

    #[test]
    fn lincheck_empty_history_is_linearizable() {
        assert_eq!(check(&Store::new(10), STEPS), CheckResult::Ok);
    }

    #[test]
    fn lincheck_sequential_history_is_linearizable() {
        let mut h = Store::new(100);
        op(&mut h, 1, In::Get, 0, Some((Out::Got(None), 1)));
        op(
            &mut h,
            1,
            In::Delete { if_version: None },
            2,
            Some((Out::NotFound, 3)),
        );
        op(&mut h, 1, put(10), 4, Some((put_ok(1), 5)));
        op(&mut h, 1, In::Get, 6, Some((Out::Got(Some((10, 1))), 7)));
        op(&mut h, 1, put_if(11, 1), 8, Some((put_ok(5), 9)));
        op(&mut h, 1, put_if(12, 1), 10, Some((Out::Conflict, 11)));
        op(&mut h, 1, put(13), 12, Some((put_ok(6), 13)));
        op(
            &mut h,
            1,
            In::Delete {
                if_version: Some(5),
            },
            14,
            Some((Out::Conflict, 15)),
        );
        op(
            &mut h,
            1,
            In::Delete {
                if_version: Some(6),
            },
            16,
            Some((Out::Deleted, 17)),
        );
        op(&mut h, 1, In::Get, 18, Some((Out::Got(None), 19)));
        op(&mut h, 1, put_if(14, 6), 20, Some((Out::Conflict, 21)));
        // A new object after a delete may start its versions anew.
        op(&mut h, 1, put(15), 22, Some((put_ok(1), 23)));
        assert_eq!(check(&h, STEPS), CheckResult::Ok);
    }

    #[test]
    fn lincheck_version_zero_means_create_only() {
        let mut h = Store::new(100);
        op(&mut h, 1, put_if(1, 0), 0, Some((put_ok(3), 1)));
        op(&mut h, 1, put_if(2, 0), 2, Some((Out::Conflict, 3)));
        op(&mut h, 1, In::Get, 4, Some((Out::Got(Some((1, 3))), 5)));
        assert_eq!(check(&h, STEPS), CheckResult::Ok);
        // A create-only put that succeeds over an existing object is illegal.
        op(&mut h, 1, put_if(3, 0), 6, Some((put_ok(9), 7)));
        assert_illegal(&h);
        // And one that conflicts on an absent key too.
        let mut h = Store::new(100);
        op(&mut h, 1, put_if(1, 0), 0, Some((Out::Conflict, 1)));
        assert_illegal(&h);
    }

    #[test]
    fn lincheck_overlapping_writes_may_take_effect_in_either_order() {
        for (first, second, seen) in [((1, 1), (2, 2), 2), ((1, 2), (2, 1), 1)] {
            let mut h = Store::new(10);
            op(&mut h, 1, put(first.0), 0, Some((put_ok(first.1), 10)));
            op(&mut h, 2, put(second.0), 5, Some((put_ok(second.1), 15)));
            // A read overlapping both may see either (or nothing).
            op(&mut h, 3, In::Get, 1, Some((Out::Got(None), 12)));
            op(
                &mut h,
                3,
                In::Get,
                20,
                Some((Out::Got(Some((seen, 2))), 30)),
            );
            assert_eq!(check(&h, STEPS), CheckResult::Ok, "last write {seen}");
        }
    }

    #[test]
    fn lincheck_racing_conditional_puts_one_wins() {
        let mut h = Store::new(10);
        op(&mut h, 1, put(1), 0, Some((put_ok(1), 1)));
        op(&mut h, 2, put_if(2, 1), 10, Some((Out::Conflict, 20)));
        op(&mut h, 3, put_if(3, 1), 11, Some((put_ok(2), 19)));
        op(&mut h, 1, In::Get, 30, Some((Out::Got(Some((3, 2))), 31)));
        assert_eq!(check(&h, STEPS), CheckResult::Ok);
    }

    #[test]
    fn lincheck_unknown_write_may_or_may_not_take_effect() {
        // It did, with a version nobody was told until this read.
        let mut h = Store::new(10);
        op(&mut h, 1, put(1), 0, Some((put_ok(1), 1)));
        op(&mut h, 2, put(2), 10, None);
        op(&mut h, 1, In::Get, 20, Some((Out::Got(Some((1, 1))), 21)));
        op(
            &mut h,
            1,
            In::Get,
            1_000,
            Some((Out::Got(Some((2, 7))), 1_001)),
        );
        op(&mut h, 1, put_if(3, 7), 1_002, Some((put_ok(8), 1_003)));
        assert_eq!(check(&h, STEPS), CheckResult::Ok);

        // It did not (or was overwritten before anyone read it).
        let mut h = Store::new(10);
        op(&mut h, 1, put(1), 0, Some((put_ok(1), 1)));
        let lost = op(&mut h, 2, put(2), 10, None);
        h.ret(lost, Out::Unknown, 15).unwrap();
        op(
            &mut h,
            1,
            In::Get,
            1_000,
            Some((Out::Got(Some((1, 1))), 1_001)),
        );
        assert_eq!(check(&h, STEPS), CheckResult::Ok);

        // Unknown conditional put and delete, both taking effect.
        let mut h = Store::new(10);
        op(&mut h, 1, put(1), 0, Some((put_ok(4), 1)));
        op(&mut h, 2, put_if(2, 4), 10, None);
        op(&mut h, 1, In::Get, 20, Some((Out::Got(Some((2, 5))), 21)));
        op(
            &mut h,
            2,
            In::Delete {
                if_version: Some(5),
            },
            30,
            None,
        );
        op(&mut h, 1, In::Get, 40, Some((Out::Got(None), 41)));
        assert_eq!(check(&h, STEPS), CheckResult::Ok);
    }

    #[test]
    fn lincheck_unseen_versions_are_tracked_through_conflicts() {
        // An unknown put leaves a version nobody saw. The failed If-Match
        // on 1 pins the put before it (nothing else replaced version 1);
        // the failed If-Match on 2 then rules 2 out: the version is 3 or
        // more. Without the first conflict the put could come after the
        // second and be version 2.
        for (read_version, legal) in [(3, true), (2, false)] {
            let mut h = Store::new(10);
            op(&mut h, 1, put(1), 0, Some((put_ok(1), 1)));
            op(&mut h, 2, put(2), 10, None);
            op(&mut h, 1, put_if(3, 1), 20, Some((Out::Conflict, 21)));
            op(&mut h, 1, put_if(4, 2), 30, Some((Out::Conflict, 31)));
            op(
                &mut h,
                1,
                In::Get,
                40,
                Some((Out::Got(Some((2, read_version))), 41)),
            );
            if legal {
                assert_eq!(check(&h, STEPS), CheckResult::Ok);
            } else {
                assert_illegal(&h);
            }
        }

        let mut h = Store::new(10);
        op(&mut h, 1, put(1), 0, Some((put_ok(1), 1)));
        op(&mut h, 2, put(2), 10, None);
        op(&mut h, 1, put_if(4, 2), 30, Some((Out::Conflict, 31)));
        op(&mut h, 1, In::Get, 40, Some((Out::Got(Some((2, 2))), 41)));
        assert_eq!(check(&h, STEPS), CheckResult::Ok);
    }

    #[test]
    fn lincheck_discarded_operation_is_left_out() {
        let mut h = Store::new(10);
        op(&mut h, 1, put(1), 0, Some((put_ok(1), 1)));
        let failed = op(&mut h, 2, put(2), 10, None);
        h.discard(failed).unwrap();
        op(&mut h, 1, In::Get, 20, Some((Out::Got(Some((1, 1))), 21)));
        assert_eq!(check(&h, STEPS), CheckResult::Ok);
        assert_eq!(
            h.ret(failed, put_ok(2), 11),
            Err(HistoryError::AlreadyClosed(failed))
        );
    }

    #[test]
    fn lincheck_stale_read_is_illegal() {
        let mut h = Store::new(10);
        op(&mut h, 1, put(1), 0, Some((put_ok(1), 10)));
        op(&mut h, 1, put(2), 20, Some((put_ok(2), 30)));
        let read = op(&mut h, 2, In::Get, 40, Some((Out::Got(Some((1, 1))), 50)));
        let explanation = assert_illegal(&h);
        assert!(
            explanation.contains(&format!("fits {read}")),
            "{explanation}"
        );
        assert!(
            explanation.contains("Longest linearizable prefix: 2 operations"),
            "{explanation}"
        );
    }

    #[test]
    fn lincheck_lost_acknowledged_write_is_illegal() {
        let mut h = Store::new(10);
        op(&mut h, 1, put(1), 0, Some((put_ok(1), 10)));
        op(&mut h, 2, In::Get, 20, Some((Out::Got(None), 30)));
        assert_illegal(&h);
    }

    #[test]
    fn lincheck_lost_acknowledged_delete_is_illegal() {
        let mut h = Store::new(10);
        op(&mut h, 1, put(1), 0, Some((put_ok(1), 10)));
        op(
            &mut h,
            1,
            In::Delete { if_version: None },
            20,
            Some((Out::Deleted, 30)),
        );
        op(&mut h, 2, In::Get, 40, Some((Out::Got(Some((1, 1))), 50)));
        assert_illegal(&h);
    }

    #[test]
    fn lincheck_conditional_put_on_replaced_version_is_illegal() {
        let mut h = Store::new(10);
        op(&mut h, 1, put(1), 0, Some((put_ok(1), 10)));
        op(&mut h, 2, put(2), 20, Some((put_ok(2), 30)));
        op(&mut h, 1, put_if(3, 1), 40, Some((put_ok(3), 50)));
        assert_illegal(&h);
    }

    #[test]
    fn lincheck_two_conditional_puts_on_one_version_is_illegal() {
        let mut h = Store::new(10);
        op(&mut h, 1, put(1), 0, Some((put_ok(1), 10)));
        op(&mut h, 2, put_if(2, 1), 20, Some((put_ok(2), 40)));
        op(&mut h, 3, put_if(3, 1), 21, Some((put_ok(3), 41)));
        assert_illegal(&h);
    }

    #[test]
    fn lincheck_conflict_on_matching_version_is_illegal() {
        let mut h = Store::new(10);
        op(&mut h, 1, put(1), 0, Some((put_ok(1), 10)));
        op(&mut h, 2, put_if(2, 1), 20, Some((Out::Conflict, 30)));
        assert_illegal(&h);
    }

    #[test]
    fn lincheck_version_going_backwards_is_illegal() {
        let mut h = Store::new(10);
        op(&mut h, 1, put(1), 0, Some((put_ok(5), 10)));
        op(&mut h, 1, put(2), 20, Some((put_ok(3), 30)));
        assert_illegal(&h);

        // The same through reads of one value.
        let mut h = Store::new(10);
        op(&mut h, 1, put(1), 0, Some((put_ok(5), 10)));
        op(&mut h, 2, In::Get, 20, Some((Out::Got(Some((1, 5))), 30)));
        op(&mut h, 2, In::Get, 40, Some((Out::Got(Some((1, 4))), 50)));
        assert_illegal(&h);

        // An unseen version is still above the one it replaced: a later
        // acknowledged put must exceed it.
        let mut h = Store::new(10);
        op(&mut h, 1, put(1), 0, Some((put_ok(5), 10)));
        op(&mut h, 2, put(2), 20, None);
        op(&mut h, 1, In::Get, 30, Some((Out::Got(Some((2, 6))), 40)));
        op(&mut h, 1, put(3), 50, Some((put_ok(6), 60)));
        assert_illegal(&h);
    }

    #[test]
    fn lincheck_unknown_write_cannot_be_undone() {
        let mut h = Store::new(10);
        op(&mut h, 2, put(2), 0, None);
        op(&mut h, 1, In::Get, 10, Some((Out::Got(Some((2, 1))), 20)));
        op(&mut h, 1, In::Get, 30, Some((Out::Got(None), 40)));
        assert_illegal(&h);
    }

    #[test]
    fn lincheck_keys_are_checked_apart() {
        let mut h = Store::new(10);
        op_on(&mut h, "a", 1, put(1), 0, Some((put_ok(1), 10)));
        op_on(&mut h, "b", 1, put(1), 0, Some((put_ok(1), 10)));
        // "a" holds 1, so this read of "b" is fine...
        op_on(
            &mut h,
            "b",
            2,
            In::Get,
            20,
            Some((Out::Got(Some((1, 1))), 30)),
        );
        assert_eq!(check(&h, STEPS), CheckResult::Ok);
        // ...and this one of "b" is not.
        op_on(&mut h, "b", 2, In::Get, 40, Some((Out::Got(None), 50)));
        match check(&h, STEPS) {
            CheckResult::Illegal { key, .. } => assert_eq!(key, "b"),
            other => panic!("expected Illegal on b, got {other:?}"),
        }
    }

    #[test]
    fn lincheck_recorder_refuses_bad_records() {
        let mut h = Store::new(2);
        let a = h.call(1, "a", In::Get, 10).unwrap();
        assert_eq!(
            h.ret(a, Out::Got(None), 9),
            Err(HistoryError::ReturnBeforeCall {
                id: a,
                call_ns: 10,
                ret_ns: 9
            })
        );
        h.ret(a, Out::Got(None), 11).unwrap();
        assert_eq!(
            h.ret(a, Out::Got(None), 12),
            Err(HistoryError::AlreadyClosed(a))
        );
        assert_eq!(h.discard(OpId(7)), Err(HistoryError::NoSuchOp(OpId(7))));
        h.call(1, "a", In::Get, 20).unwrap();
        assert_eq!(
            h.call(1, "a", In::Get, 30),
            Err(HistoryError::Full { max_ops: 2 })
        );
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn lincheck_pathological_history_times_out() {
        // Twenty concurrent writes of unknown outcome, then a read of a
        // value nobody wrote: proving it illegal means trying every subset
        // of the writes, far beyond this budget.
        let mut h = Store::new(100);
        for value in 0..20 {
            op(&mut h, value, put(value), value, None);
        }
        op(
            &mut h,
            99,
            In::Get,
            100,
            Some((Out::Got(Some((1_000, 1))), 200)),
        );
        match check(&h, 10_000) {
            CheckResult::Timeout { key, steps } => {
                assert_eq!(key, "a");
                assert_eq!(steps, 10_001);
            }
            other => panic!("expected Timeout, got {other:?}"),
        }
    }

    /// One generated operation, kept apart from a [`History`] so that a
    /// test can corrupt it before recording.
    #[derive(Debug, Clone)]
    struct Generated {
        client: u64,
        key: u64,
        input: In,
        call_ns: u64,
        /// `None`: the client never learned the outcome.
        ret: Option<(Out, u64)>,
    }

    struct Workload {
        ops: usize,
        keys: u64,
        clients: u64,
        /// Widest gap between call and linearization point, and between
        /// that and the return.
        jitter_ns: u64,
        /// Chance that a client never learns an outcome.
        unknown: f64,
    }

    /// Runs a sequential object store, each operation at its own instant,
    /// and records each operation over an interval around that instant.
    /// Every client waits for (or gives up on) one operation before the
    /// next, as real clients do.
    fn generate(workload: &Workload, rng: &mut SmallRng) -> Vec<Generated> {
        // (call, linearization point, return) per operation, per client.
        let mut clock_ns = vec![0u64; workload.clients as usize];
        let mut intervals = Vec::with_capacity(workload.ops);
        for index in 0..workload.ops {
            let client = index % workload.clients as usize;
            let call_ns = clock_ns[client] + rng.gen_range(1..=workload.jitter_ns);
            let at_ns = call_ns + rng.gen_range(0..=workload.jitter_ns);
            let ret_ns = at_ns + rng.gen_range(0..=workload.jitter_ns);
            clock_ns[client] = ret_ns;
            intervals.push((at_ns, client as u64, call_ns, ret_ns));
        }
        intervals.sort_unstable();

        let mut store: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        let mut next_version = vec![1u64; workload.keys as usize];
        let mut next_value = 1u64;
        let mut ops = Vec::with_capacity(workload.ops);
        for (_, client, call_ns, ret_ns) in intervals {
            let key = rng.gen_range(0..workload.keys);
            let current = store.get(&key).copied();
            // If-Match on the current version most of the time.
            let if_version = match (rng.gen_range(0..3), current) {
                (0, _) => None,
                (1, _) | (_, None) => Some(rng.gen_range(1..next_version[key as usize] + 1)),
                (_, Some((_, version))) => Some(version),
            };
            let matches = if_version.is_none()
                || current.map(|(_, version)| Some(version)) == Some(if_version);
            let input = match rng.gen_range(0..10) {
                0..=3 => In::Get,
                4..=7 => {
                    next_value += 1;
                    In::Put {
                        value: next_value,
                        if_version,
                    }
                }
                _ => In::Delete { if_version },
            };
            let unknown = rng.gen_bool(workload.unknown);
            // An operation with an unknown outcome may or may not apply.
            let applies = !unknown || rng.gen_bool(0.5);
            let output = match input {
                In::Get => Out::Got(current),
                In::Put { value, .. } if matches => {
                    let version = next_version[key as usize];
                    if applies {
                        next_version[key as usize] += rng.gen_range(1..=3);
                        store.insert(key, (value, version));
                    }
                    Out::Put { version }
                }
                In::Put { .. } => Out::Conflict,
                In::Delete { .. } if current.is_none() => Out::NotFound,
                In::Delete { .. } if matches => {
                    if applies {
                        store.remove(&key);
                    }
                    Out::Deleted
                }
                In::Delete { .. } => Out::Conflict,
            };
            ops.push(Generated {
                client,
                key,
                input,
                call_ns,
                ret: (!unknown).then_some((output, ret_ns)),
            });
        }
        ops
    }

    fn record(ops: &[Generated]) -> History<ObjectStore, u64> {
        let mut history = History::new(ops.len());
        for op in ops {
            let id = history
                .call(op.client, op.key, op.input, op.call_ns)
                .unwrap();
            if let Some((output, ret_ns)) = op.ret {
                history.ret(id, output, ret_ns).unwrap();
            }
        }
        history
    }

    /// The randomized tests run each seed on both: a few clients over two
    /// keys, and eight clients fighting over one key with many timeouts.
    fn workloads() -> [Workload; 2] {
        [
            Workload {
                ops: 60,
                keys: 2,
                clients: 4,
                jitter_ns: 30,
                unknown: 0.05,
            },
            Workload {
                ops: 60,
                keys: 1,
                clients: 8,
                jitter_ns: 100,
                unknown: 0.1,
            },
        ]
    }

    #[test]
    fn lincheck_random_linearizable_histories_pass() {
        for (seed, workload) in (0..200).flat_map(|seed| workloads().map(|w| (seed, w))) {
            let mut rng = SmallRng::seed_from_u64(seed);
            let ops = generate(&workload, &mut rng);
            let result = check(&record(&ops), 1_000_000);
            assert_eq!(
                result,
                CheckResult::Ok,
                "seed {seed}, {} clients",
                workload.clients
            );
        }
    }

    #[test]
    fn lincheck_random_histories_with_a_read_of_an_unwritten_value_fail() {
        for (seed, workload) in (0..200).flat_map(|seed| workloads().map(|w| (seed, w))) {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut ops = generate(&workload, &mut rng);
            let reads: Vec<usize> = (0..ops.len())
                .filter(|&i| ops[i].input == In::Get && ops[i].ret.is_some())
                .collect();
            let victim = reads[rng.gen_range(0..reads.len())];
            let ret_ns = ops[victim].ret.unwrap().1;
            ops[victim].ret = Some((Out::Got(Some((0, 1))), ret_ns));
            match check(&record(&ops), 1_000_000) {
                CheckResult::Illegal { key, .. } => assert_eq!(
                    key, ops[victim].key,
                    "seed {seed}, {} clients",
                    workload.clients
                ),
                other => panic!(
                    "seed {seed}, {} clients: expected Illegal, got {other:?}",
                    workload.clients
                ),
            }
        }
    }

    /// Whether `op` surely replaced whatever its key held: an acknowledged
    /// put or delete.
    fn acknowledged_write(op: &Generated) -> bool {
        matches!(op.ret, Some((Out::Put { .. } | Out::Deleted, _)))
    }

    #[test]
    fn lincheck_random_histories_with_a_stale_read_fail() {
        let mut corrupted = 0;
        for (seed, workload) in (0..200).flat_map(|seed| workloads().map(|w| (seed, w))) {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut ops = generate(&workload, &mut rng);
            // A read R, a put W and an acknowledged write M on one key with
            // W before M before R in real time: every linearization has
            // them in that order, and only W wrote its value, so R cannot
            // see it.
            let mut stale = None;
            'search: for r in 0..ops.len() {
                let Some((Out::Got(_), _)) = ops[r].ret else {
                    continue;
                };
                for w in 0..ops.len() {
                    let Some((Out::Put { version }, w_ret_ns)) = ops[w].ret else {
                        continue;
                    };
                    let In::Put { value, .. } = ops[w].input else {
                        continue;
                    };
                    let replaced = (0..ops.len()).any(|m| {
                        ops[m].key == ops[r].key
                            && acknowledged_write(&ops[m])
                            && w_ret_ns < ops[m].call_ns
                            && ops[m]
                                .ret
                                .is_some_and(|(_, m_ret_ns)| m_ret_ns < ops[r].call_ns)
                    });
                    if ops[w].key == ops[r].key && replaced {
                        stale = Some((r, value, version));
                        break 'search;
                    }
                }
            }
            let Some((r, value, version)) = stale else {
                continue;
            };
            let ret_ns = ops[r].ret.unwrap().1;
            ops[r].ret = Some((Out::Got(Some((value, version))), ret_ns));
            corrupted += 1;
            match check(&record(&ops), 1_000_000) {
                CheckResult::Illegal { key, .. } => {
                    assert_eq!(key, ops[r].key, "seed {seed}, {} clients", workload.clients)
                }
                other => panic!(
                    "seed {seed}, {} clients: expected Illegal, got {other:?}",
                    workload.clients
                ),
            }
        }
        assert!(
            corrupted > 150,
            "only {corrupted} seeds had a stale read to plant"
        );
    }

    #[test]
    fn lincheck_2000_operations_check_quickly() {
        let workload = Workload {
            ops: 2_000,
            keys: 20,
            clients: 8,
            jitter_ns: 1_000,
            unknown: 0.03,
        };
        let mut rng = SmallRng::seed_from_u64(7);
        let history = record(&generate(&workload, &mut rng));
        // The budget stands in for a time limit (no clock here): passing it
        // means the check took well under a second in a debug build.
        assert_eq!(check(&history, 20_000), CheckResult::Ok);
    }
}
