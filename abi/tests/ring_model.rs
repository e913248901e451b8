//! Property tests: the guest producer and host consumer against a FIFO model, across the `u32`
//! index wrap, with a full ring, and with garbage written over the guest's published index.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use proptest::prelude::*;
use vpm_abi::{Consumer, HeaderStatus, Producer, RingFull, SharedPage, RESULT_PENDING};

#[derive(Clone, Debug)]
enum Step {
    Push { op: u16, gpa: u64, len: u64 },
    Take,
    Finish { result: i32 },
    Garbage { produced: u32 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (any::<u16>(), any::<u64>(), any::<u64>()).prop_map(|(op, gpa, len)| Step::Push { op, gpa, len }),
        3 => Just(Step::Take),
        3 => (-9i32..=0).prop_map(|result| Step::Finish { result }),
        1 => any::<u32>().prop_map(|produced| Step::Garbage { produced }),
    ]
}

/// The model: entries published but not taken, and taken but not finished, with their seq.
#[derive(Default)]
struct Model {
    untaken: VecDeque<(u16, u64, u64, u64)>,
    unfinished: VecDeque<(u64, vpm_abi::Taken)>,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn producer_and_consumer_follow_the_fifo_model(
        log2_entries in 0u32..=6,
        start in prop_oneof![Just(0u32), Just(u32::MAX - 20), any::<u32>()],
        steps in prop::collection::vec(step(), 1..200),
    ) {
        let entries = 1u32 << log2_entries;
        let page = Box::new(SharedPage::zeroed());
        let mut producer = Producer::prepare_from(&page, entries, 0, start).unwrap();
        let mut consumer = Consumer::attach(&page, 0).unwrap();
        let mut model = Model::default();
        let mut tickets = Vec::new();
        let mut stopped = false;

        for s in steps {
            match s {
                Step::Push { op, gpa, len } => {
                    let in_flight = model.untaken.len() + model.unfinished.len();
                    let got = producer.push(op, gpa, len);
                    if stopped {
                        continue;
                    }
                    if in_flight == entries as usize {
                        prop_assert_eq!(got, Err(RingFull));
                    } else {
                        let t = got.unwrap();
                        model.untaken.push_back((op, gpa, len, t.seq));
                        tickets.push(t);
                    }
                }
                Step::Take => {
                    let got = consumer.take(&page);
                    if stopped {
                        prop_assert_eq!(got, Err(HeaderStatus::BadIndex));
                        continue;
                    }
                    match (got.unwrap(), model.untaken.pop_front()) {
                        (None, None) => {}
                        (Some(t), Some((op, gpa, len, seq))) => {
                            prop_assert_eq!((t.entry.op, t.entry.gpa, t.entry.len, t.entry.seq), (op, gpa, len, seq));
                            prop_assert_eq!(t.entry.result, RESULT_PENDING);
                            model.unfinished.push_back((seq, t));
                        }
                        (got, want) => prop_assert!(false, "took {:?}, model has {:?}", got, want),
                    }
                }
                Step::Finish { result } => {
                    match model.unfinished.pop_front() {
                        Some((seq, t)) => {
                            prop_assert!(consumer.finish(&page, &t, result));
                            prop_assert_eq!(page.header.completed_seq.load(Ordering::Relaxed), seq);
                            let ticket = tickets.iter().find(|k| k.seq == seq).unwrap();
                            if !stopped {
                                prop_assert_eq!(producer.result(*ticket), Some(result));
                            }
                        }
                        None => prop_assert_eq!(consumer.unfinished(), 0),
                    }
                }
                Step::Garbage { produced } => {
                    page.header.produced.store(produced, Ordering::Release);
                    let consumed = page.header.consumed.load(Ordering::Relaxed);
                    let published = produced.wrapping_sub(consumed);
                    let got = consumer.take(&page);
                    if stopped || published > entries {
                        // An index that runs past the ring stops it, for good.
                        prop_assert_eq!(got, Err(HeaderStatus::BadIndex));
                        prop_assert_eq!(page.status(), Some(HeaderStatus::BadIndex));
                        prop_assert_eq!(consumer.take(&page), Err(HeaderStatus::BadIndex));
                        stopped = true;
                    } else {
                        // A plausible index: the host may read stale slots, but only inside
                        // [consumed, produced); the model cannot predict further, so stop here.
                        if let Some(t) = got.unwrap() {
                            prop_assert!(t.index.wrapping_sub(consumed) < published);
                        }
                        break;
                    }
                }
            }
        }
    }
}
