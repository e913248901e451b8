//! The doorbell: a one-byte I/O port through which the guest registers its shared page and asks
//! the host to process the ring.
//!
//! Every doorbell write is a single byte (`out dx, al`), so the same protocol works for an I/O
//! exit to a KVM VMM and for QEMU's `isa-debugcon` byte stream. A read of the port returns
//! [`PROBE_REPLY`] when a VPM host is there (an unclaimed port reads as `0xff`).
//!
//! Byte stream: [`CMD_RING`] | [`CMD_REGISTER`] followed by the shared page's guest-physical
//! address as 8 little-endian bytes | [`CMD_UNREGISTER`] | [`CMD_REGISTER_RING`] followed by a
//! ring index and 8 address bytes | [`CMD_UNREGISTER_RING`] followed by a ring index. Any other
//! command byte is counted and ignored by the host. The ring-indexed pair is used only by a guest
//! granted [`super::op::features::RINGS`] (one ring per guest CPU on a front where the host cannot
//! tell which CPU wrote the byte, QEMU's single debugcon stream).

/// Default I/O port of the doorbell (a module parameter in the guest driver can move it).
pub const DOORBELL_PORT: u16 = 0x0f50;
/// What a read of the doorbell port returns when a VPM host serves it: `'V'`.
pub const PROBE_REPLY: u8 = b'V';

/// Process the ring up to the current `produced` index.
pub const CMD_RING: u8 = 0x01;
/// Register a shared page; 8 address bytes follow.
pub const CMD_REGISTER: u8 = 0x02;
/// Unregister the shared page; the host stops reading it.
pub const CMD_UNREGISTER: u8 = 0x03;
/// Feature `RINGS`: register a shared page as ring `i`; the ring index (1 byte) and 8 address
/// bytes follow. [`CMD_REGISTER`] is ring 0's registration.
pub const CMD_REGISTER_RING: u8 = 0x04;
/// Feature `RINGS`: unregister ring `i`; the ring index (1 byte) follows.
pub const CMD_UNREGISTER_RING: u8 = 0x05;
/// Most bytes one command takes ([`CMD_REGISTER_RING`]): the size of [`encode`]'s buffer.
pub const MAX_CMD_BYTES: usize = 10;
/// Most rings a guest registers with feature `RINGS` (indices `0..MAX_RINGS`); a host may serve
/// fewer and refuses (without answering) an index it does not have.
pub const MAX_RINGS: usize = 8;

/// A complete doorbell command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DoorbellCmd {
    /// See [`CMD_RING`].
    Ring,
    /// See [`CMD_REGISTER`]; the shared page's guest-physical address.
    Register(u64),
    /// See [`CMD_UNREGISTER`].
    Unregister,
    /// See [`CMD_REGISTER_RING`]: ring index, the shared page's guest-physical address.
    RegisterRing(u8, u64),
    /// See [`CMD_UNREGISTER_RING`]: ring index.
    UnregisterRing(u8),
    /// A command byte this ABI version does not define.
    Unknown(u8),
}

/// The bytes a guest writes for `cmd`, in order; returns the byte count used in `out`.
pub fn encode(cmd: DoorbellCmd, out: &mut [u8; MAX_CMD_BYTES]) -> usize {
    match cmd {
        DoorbellCmd::Ring => {
            out[0] = CMD_RING;
            1
        }
        DoorbellCmd::Unregister => {
            out[0] = CMD_UNREGISTER;
            1
        }
        DoorbellCmd::Unknown(b) => {
            out[0] = b;
            1
        }
        DoorbellCmd::Register(gpa) => {
            out[0] = CMD_REGISTER;
            out[1..9].copy_from_slice(&gpa.to_le_bytes());
            9
        }
        DoorbellCmd::RegisterRing(ring, gpa) => {
            out[0] = CMD_REGISTER_RING;
            out[1] = ring;
            out[2..10].copy_from_slice(&gpa.to_le_bytes());
            10
        }
        DoorbellCmd::UnregisterRing(ring) => {
            out[0] = CMD_UNREGISTER_RING;
            out[1] = ring;
            2
        }
    }
}

/// What the decoder is in the middle of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Partial {
    /// Waiting for a command byte.
    #[default]
    Idle,
    /// REGISTER: address bytes.
    Register,
    /// REGISTER_RING: the ring index byte.
    RegisterRingIndex,
    /// REGISTER_RING: address bytes.
    RegisterRing,
    /// UNREGISTER_RING: the ring index byte.
    UnregisterRingIndex,
}

/// The host's decoder of the doorbell byte stream. Any byte sequence is accepted without panic.
#[derive(Clone, Copy, Debug, Default)]
pub struct DoorbellDecoder {
    partial: Partial,
    /// Address bytes of a register command still expected.
    pending: u8,
    ring: u8,
    addr: u64,
}

impl DoorbellDecoder {
    /// A decoder waiting for a command byte.
    pub const fn new() -> Self {
        DoorbellDecoder {
            partial: Partial::Idle,
            pending: 0,
            ring: 0,
            addr: 0,
        }
    }

    /// Feeds one byte; returns a command when it is complete.
    pub fn feed(&mut self, byte: u8) -> Option<DoorbellCmd> {
        match self.partial {
            Partial::Idle => {}
            Partial::Register | Partial::RegisterRing => {
                let shift = 8 * (8 - self.pending as u32);
                self.addr |= (byte as u64) << shift;
                self.pending -= 1;
                if self.pending > 0 {
                    return None;
                }
                let cmd = match self.partial {
                    Partial::Register => DoorbellCmd::Register(self.addr),
                    _ => DoorbellCmd::RegisterRing(self.ring, self.addr),
                };
                self.partial = Partial::Idle;
                return Some(cmd);
            }
            Partial::RegisterRingIndex => {
                self.ring = byte;
                self.partial = Partial::RegisterRing;
                return None;
            }
            Partial::UnregisterRingIndex => {
                self.partial = Partial::Idle;
                return Some(DoorbellCmd::UnregisterRing(byte));
            }
        }
        match byte {
            CMD_RING => Some(DoorbellCmd::Ring),
            CMD_UNREGISTER => Some(DoorbellCmd::Unregister),
            CMD_REGISTER | CMD_REGISTER_RING => {
                self.partial = if byte == CMD_REGISTER {
                    Partial::Register
                } else {
                    Partial::RegisterRingIndex
                };
                self.pending = 8;
                self.addr = 0;
                None
            }
            CMD_UNREGISTER_RING => {
                self.partial = Partial::UnregisterRingIndex;
                None
            }
            other => Some(DoorbellCmd::Unknown(other)),
        }
    }

    /// Whether the decoder is in the middle of a register command.
    pub const fn is_mid_command(&self) -> bool {
        !matches!(self.partial, Partial::Idle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> ([Option<DoorbellCmd>; 16], usize) {
        let mut d = DoorbellDecoder::new();
        let mut out = [None; 16];
        let mut n = 0;
        for &b in bytes {
            if let Some(c) = d.feed(b) {
                out[n] = Some(c);
                n += 1;
            }
        }
        (out, n)
    }

    #[test]
    fn register_carries_a_little_endian_address() {
        let mut buf = [0u8; MAX_CMD_BYTES];
        let n = encode(DoorbellCmd::Register(0x1234_5678_9abc_d000), &mut buf);
        assert_eq!(n, 9);
        let (cmds, count) = decode_all(&buf[..n]);
        assert_eq!(count, 1);
        assert_eq!(cmds[0], Some(DoorbellCmd::Register(0x1234_5678_9abc_d000)));
    }

    #[test]
    fn a_stream_of_commands_decodes_in_order() {
        let mut stream = [0u8; 12];
        stream[0] = CMD_RING;
        let mut buf = [0u8; MAX_CMD_BYTES];
        let n = encode(DoorbellCmd::Register(0x5000), &mut buf);
        stream[1..10].copy_from_slice(&buf[..n]);
        stream[10] = 0x77;
        stream[11] = CMD_UNREGISTER;
        let (cmds, count) = decode_all(&stream);
        assert_eq!(count, 4);
        assert_eq!(
            cmds[..4],
            [
                Some(DoorbellCmd::Ring),
                Some(DoorbellCmd::Register(0x5000)),
                Some(DoorbellCmd::Unknown(0x77)),
                Some(DoorbellCmd::Unregister)
            ]
        );
    }

    #[test]
    fn ring_indexed_commands_round_trip() {
        for cmd in [
            DoorbellCmd::RegisterRing(0, 0x7000),
            DoorbellCmd::RegisterRing(3, 0x1234_5678_9abc_d000),
            DoorbellCmd::RegisterRing(255, u64::MAX),
            DoorbellCmd::UnregisterRing(1),
            DoorbellCmd::UnregisterRing(255),
        ] {
            let mut buf = [0u8; MAX_CMD_BYTES];
            let n = encode(cmd, &mut buf);
            let (cmds, count) = decode_all(&buf[..n]);
            assert_eq!((count, cmds[0]), (1, Some(cmd)), "{cmd:?}");
        }
    }

    #[test]
    fn ring_indexed_commands_mix_with_the_others_and_any_index_decodes() {
        // An index no host has (200) decodes as such: refusing it is the host's job.
        let mut stream = [0u8; 32];
        let mut at = 0;
        for cmd in [
            DoorbellCmd::RegisterRing(200, 0x9000),
            DoorbellCmd::Ring,
            DoorbellCmd::UnregisterRing(CMD_RING),
            DoorbellCmd::Register(0x3000),
            DoorbellCmd::Unknown(0x66),
        ] {
            let mut buf = [0u8; MAX_CMD_BYTES];
            let n = encode(cmd, &mut buf);
            stream[at..at + n].copy_from_slice(&buf[..n]);
            at += n;
        }
        let mut d = DoorbellDecoder::new();
        let mut got = [None; 8];
        let mut count = 0;
        for &b in &stream[..at] {
            if let Some(c) = d.feed(b) {
                got[count] = Some(c);
                count += 1;
            }
        }
        assert!(!d.is_mid_command());
        assert_eq!(
            got[..count],
            [
                Some(DoorbellCmd::RegisterRing(200, 0x9000)),
                Some(DoorbellCmd::Ring),
                // The index byte equals CMD_RING: it is an index, not a command.
                Some(DoorbellCmd::UnregisterRing(CMD_RING)),
                Some(DoorbellCmd::Register(0x3000)),
                Some(DoorbellCmd::Unknown(0x66)),
            ]
        );
    }

    #[test]
    fn a_decoder_mid_ring_registration_says_so() {
        let mut d = DoorbellDecoder::new();
        assert_eq!(d.feed(CMD_REGISTER_RING), None);
        assert!(d.is_mid_command());
        assert_eq!(d.feed(2), None);
        for _ in 0..7 {
            assert_eq!(d.feed(0), None);
        }
        assert!(d.is_mid_command());
        assert_eq!(d.feed(0x10), Some(DoorbellCmd::RegisterRing(2, 0x10 << 56)));
        assert!(!d.is_mid_command());
    }
}
