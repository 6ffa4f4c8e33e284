//! The registry against a `HashMap` model: random insert/remove/token/by_token
//! sequences over small, boundary, huge and negative fds with heavy reuse. Every
//! token ever handed out is replayed, so a stale token that matched a new owner
//! would be caught.

use std::collections::HashMap;
use std::os::fd::RawFd;

use oxloop_core::registry::{split_token, Registry, DENSE_LIMIT};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Insert(RawFd, u32),
    Remove(RawFd),
    Token(RawFd),
    /// Replays the n-th token handed out so far (modulo their number).
    ByToken(usize),
    Get(RawFd),
}

fn fd() -> impl Strategy<Value = RawFd> {
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    let limit = DENSE_LIMIT as RawFd;
    prop_oneof![
        4 => 0..6i32,
        1 => (limit - 2)..(limit + 2),
        1 => (RawFd::MAX - 2)..=RawFd::MAX,
        1 => Just(3_000_000),
        1 => RawFd::MIN..0,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (fd(), any::<u32>()).prop_map(|(fd, v)| Op::Insert(fd, v)),
        3 => fd().prop_map(Op::Remove),
        1 => fd().prop_map(Op::Token),
        3 => any::<usize>().prop_map(Op::ByToken),
        1 => fd().prop_map(Op::Get),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn registry_matches_model(ops in proptest::collection::vec(op(), 1..200)) {
        let mut reg = Registry::new();
        let mut model: HashMap<RawFd, (u32, u64)> = HashMap::new();
        let mut issued: Vec<u64> = Vec::new();
        for op in ops {
            match op {
                Op::Insert(fd, v) => {
                    let announced = reg.vacant_token(fd);
                    let got = reg.insert(fd, v);
                    if fd < 0 || model.contains_key(&fd) {
                        prop_assert_eq!(announced, None);
                        prop_assert_eq!(got, Err(v));
                    } else {
                        let token = got.expect("free fd");
                        prop_assert_eq!(announced, Some(token));
                        prop_assert_eq!(split_token(token).0, fd);
                        prop_assert_ne!(split_token(token).1, 0);
                        prop_assert!(!issued.contains(&token), "token reused");
                        issued.push(token);
                        model.insert(fd, (v, token));
                    }
                }
                Op::Remove(fd) => {
                    prop_assert_eq!(reg.remove(fd), model.remove(&fd).map(|(v, _)| v));
                }
                Op::Token(fd) => {
                    prop_assert_eq!(reg.token(fd), model.get(&fd).map(|(_, t)| *t));
                }
                Op::ByToken(n) => {
                    if issued.is_empty() {
                        continue;
                    }
                    let token = issued[n % issued.len()];
                    let (fd, _) = split_token(token);
                    let expected = model
                        .get(&fd)
                        .filter(|(_, t)| *t == token)
                        .map(|(v, _)| (fd, *v));
                    prop_assert_eq!(reg.by_token(token).map(|(fd, v)| (fd, *v)), expected);
                }
                Op::Get(fd) => {
                    prop_assert_eq!(reg.get(fd).copied(), model.get(&fd).map(|(v, _)| *v));
                }
            }
            prop_assert_eq!(reg.len(), model.len());
            prop_assert!(reg.dense_capacity() <= DENSE_LIMIT);
        }
        let mut seen = Vec::new();
        reg.for_each(|fd, v| seen.push((fd, *v)));
        seen.sort_unstable();
        let mut want: Vec<_> = model.iter().map(|(fd, (v, _))| (*fd, *v)).collect();
        want.sort_unstable();
        prop_assert_eq!(&seen, &want);
        prop_assert_eq!(reg.drain(), want);
        prop_assert!(reg.is_empty());
    }
}
