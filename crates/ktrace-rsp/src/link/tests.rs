//! The link in simulated time: the cases of `tests/batch_damage.rs` and the
//! rest of the connection's protocol logic, without sockets or sleeps.

use std::time::Duration;

use super::sim::{memory, Answer, Sim, TIMEOUT};
use super::Outcome;
use crate::{ProtocolError, RspError};

fn bytes(v: &[&str]) -> Vec<Vec<u8>> {
    v.iter().map(|s| s.as_bytes().to_vec()).collect()
}

/// `memory`, except that the first request matching `first` gets `answer`.
fn once(first: &'static str, answer: Answer) -> impl FnMut(&[u8]) -> Answer {
    let mut done = false;
    move |req| {
        if !done && req == first.as_bytes() {
            done = true;
            return answer.clone();
        }
        memory(req)
    }
}

#[test]
fn valid_request_is_acknowledged_both_ways() {
    let mut sim = Sim::new(memory);
    assert_eq!(sim.batch(&["m1000,2"], 1).unwrap(), bytes(&["0000"]));
    assert_eq!(sim.stub.acks, 1, "the client acknowledges the reply");
    assert_eq!(sim.elapsed(), Duration::ZERO);
}

#[test]
fn valid_no_ack_mode_sends_no_acks() {
    let mut sim = Sim::new(memory).no_ack();
    assert_eq!(sim.batch(&["m1011,1", "m1022,1"], 2).unwrap(), bytes(&["11", "22"]));
    assert_eq!(sim.stub.acks, 0);
}

#[test]
fn valid_batch_goes_out_in_windows_of_the_depth() {
    let mut sim = Sim::new(memory);
    let replies = sim.batch(&["m1001,1", "m1002,1", "m1003,1", "m1004,1", "m1005,1"], 2).unwrap();
    assert_eq!(replies, bytes(&["01", "02", "03", "04", "05"]));
    assert_eq!(sim.stub.writes, vec![2, 2, 1], "one write per window");
}

#[test]
fn valid_replies_arriving_byte_by_byte_are_joined() {
    let mut sim = Sim::new(memory);
    sim.byte_by_byte = true;
    assert_eq!(sim.batch(&["m1011,2", "m1022,2", "m1033,2"], 3).unwrap(), bytes(&["1111", "2222", "3333"]));
}

#[test]
fn damaged_reply_in_a_batch_of_reads_is_retried_not_shifted() {
    let mut sim = Sim::new(once("m1011,2", Answer::Damaged(b"1111".to_vec())));
    let replies = sim.batch(&["m1011,2", "m1022,2", "m1033,2"], 32).expect("the batch recovers");
    assert_eq!(replies, bytes(&["1111", "2222", "3333"]));
    assert_eq!(sim.stub.writes, vec![3, 1, 1, 1], "sent again one request at a time");
    assert_eq!(sim.stub.naks, 0, "a reply inside a batch is not NAKed (QEMU would resend its latest)");
    assert_eq!(sim.elapsed(), Duration::from_millis(50), "one quiet period");
    // And the connection is in step afterwards.
    assert_eq!(sim.batch(&["m1022,2"], 32).unwrap(), bytes(&["2222"]));
}

#[test]
fn damaged_reply_in_a_batch_with_side_effects_fails() {
    let mut sim = Sim::new(once("Z0,1000,1", Answer::Damaged(b"OK".to_vec())));
    let err = sim.batch(&["Z0,1000,1", "m1022,2"], 32).expect_err("a damaged Z0 batch is not retried");
    assert!(matches!(err, RspError::Protocol(ProtocolError::DamagedBatch)), "{err:?}");
    assert!(err.to_string().contains("damaged"), "{err}");
    // In step afterwards, and the breakpoint was inserted once.
    assert_eq!(sim.batch(&["m1022,2"], 32).unwrap(), bytes(&["2222"]));
    assert_eq!(sim.stub.requests.iter().filter(|r| r.starts_with(b"Z0")).count(), 1);
}

#[test]
fn damaged_single_reply_is_naked_and_sent_again() {
    let mut sim = Sim::new(once("m1011,2", Answer::Damaged(b"1111".to_vec())));
    assert_eq!(sim.batch(&["m1011,2"], 32).unwrap(), bytes(&["1111"]));
    assert_eq!(sim.stub.naks, 1);
    assert_eq!(sim.stub.requests.len(), 1, "the stub resends its reply; the request goes once");
}

#[test]
fn nak_of_a_request_retransmits_it() {
    let mut sim = Sim::new(once("m1011,2", Answer::Nak));
    assert_eq!(sim.batch(&["m1011,2"], 1).unwrap(), bytes(&["1111"]));
    assert_eq!(sim.stub.requests, bytes(&["m1011,2", "m1011,2"]));
}

#[test]
fn invalid_endless_naks_give_up() {
    let mut sim = Sim::new(|_: &[u8]| Answer::Nak);
    let err = sim.batch(&["m1011,2"], 1).expect_err("gives up");
    assert!(matches!(err, RspError::Protocol(ProtocolError::TooManyRetransmissions)), "{err:?}");
    assert_eq!(sim.stub.requests.len(), super::MAX_RETRANSMIT as usize + 1);
}

#[test]
fn silent_stub_times_out_at_the_deadline() {
    let mut sim = Sim::new(|_: &[u8]| Answer::Nothing);
    let err = sim.batch(&["m1011,2"], 1).expect_err("no reply");
    assert!(matches!(&err, RspError::Timeout { request } if request == "m1011"), "{err:?}");
    assert_eq!(sim.elapsed(), TIMEOUT);
}

#[test]
fn each_reply_of_a_window_has_its_own_deadline() {
    // The second reply of the window never comes: the window is drained
    // and, being reads, sent again one at a time.
    let mut sim = Sim::new(once("m1022,2", Answer::Nothing));
    assert_eq!(sim.batch(&["m1011,2", "m1022,2"], 32).unwrap(), bytes(&["1111", "2222"]));
    assert_eq!(sim.elapsed(), TIMEOUT + Duration::from_millis(50));
}

#[test]
fn invalid_stub_that_never_stops_sending_fails_the_batch() {
    let mut sim = Sim::new(once("m1011,2", Answer::Damaged(b"1111".to_vec())));
    sim.chatter = Some(Duration::from_millis(10));
    let err = sim.batch(&["m1011,2", "m1022,2"], 32).expect_err("no quiet moment");
    assert!(matches!(err, RspError::Protocol(ProtocolError::EndlessAfterDamage)), "{err:?}");
    assert!(sim.elapsed() > TIMEOUT && sim.elapsed() <= TIMEOUT + Duration::from_millis(10), "{:?}", sim.elapsed());
}

#[test]
fn expect_packet_untimed_waits_without_a_deadline() {
    let mut sim = Sim::new(memory);
    sim.link.expect_packet("stop reply", false, sim.now());
    assert_eq!(sim.link.poll_timeout(), None);
    sim.link.handle_input(b"+$T05thread:01;#07", sim.now());
    assert_eq!(sim.link.poll().unwrap().unwrap(), Outcome::Packet(b"T05thread:01;".to_vec()));
    assert_eq!(sim.link.transmit(), b"+", "acknowledged");
}

#[test]
fn expect_packet_timed_names_what_it_waited_for() {
    let mut sim = Sim::new(memory);
    sim.link.expect_packet("stop reply", true, sim.now());
    let err = sim.run().expect_err("nothing comes");
    assert!(matches!(&err, RspError::Timeout { request } if request == "stop reply"), "{err:?}");
    assert_eq!(sim.elapsed(), TIMEOUT);
}

#[test]
fn packets_after_an_exchange_wait_for_the_next_one() {
    let mut sim = Sim::new(memory);
    let now = sim.now();
    sim.link.handle_input(b"$O6869#2c$T05thread:01;#07", now);
    assert!(sim.link.poll().is_none(), "no exchange: nothing is consumed");
    for want in [&b"O6869"[..], b"T05thread:01;"] {
        sim.link.expect_packet("stop reply", true, now);
        assert_eq!(sim.link.poll().unwrap().unwrap(), Outcome::Packet(want.to_vec()));
    }
}
