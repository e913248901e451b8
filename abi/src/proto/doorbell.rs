//! The doorbell: a one-byte I/O port through which the guest registers its shared page and asks
//! the host to process the ring.
//!
//! Every doorbell write is a single byte (`out dx, al`), so the same protocol works for an I/O
//! exit to a KVM VMM and for QEMU's `isa-debugcon` byte stream. A read of the port returns
//! [`PROBE_REPLY`] when a VPM host is there (an unclaimed port reads as `0xff`).
//!
//! Byte stream: [`CMD_RING`] | [`CMD_REGISTER`] followed by the shared page's guest-physical
//! address as 8 little-endian bytes | [`CMD_UNREGISTER`]. Any other command byte is counted and
//! ignored by the host.

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

/// A complete doorbell command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DoorbellCmd {
    /// See [`CMD_RING`].
    Ring,
    /// See [`CMD_REGISTER`]; the shared page's guest-physical address.
    Register(u64),
    /// See [`CMD_UNREGISTER`].
    Unregister,
    /// A command byte this ABI version does not define.
    Unknown(u8),
}

/// The bytes a guest writes for `cmd`, in order; returns the byte count used in `out`.
pub fn encode(cmd: DoorbellCmd, out: &mut [u8; 9]) -> usize {
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
    }
}

/// The host's decoder of the doorbell byte stream. Any byte sequence is accepted without panic.
#[derive(Clone, Copy, Debug, Default)]
pub struct DoorbellDecoder {
    /// Address bytes of a register command still expected (0 when idle).
    pending: u8,
    addr: u64,
}

impl DoorbellDecoder {
    /// A decoder waiting for a command byte.
    pub const fn new() -> Self {
        DoorbellDecoder {
            pending: 0,
            addr: 0,
        }
    }

    /// Feeds one byte; returns a command when it is complete.
    pub fn feed(&mut self, byte: u8) -> Option<DoorbellCmd> {
        if self.pending > 0 {
            let shift = 8 * (8 - self.pending as u32);
            self.addr |= (byte as u64) << shift;
            self.pending -= 1;
            return (self.pending == 0).then_some(DoorbellCmd::Register(self.addr));
        }
        match byte {
            CMD_RING => Some(DoorbellCmd::Ring),
            CMD_UNREGISTER => Some(DoorbellCmd::Unregister),
            CMD_REGISTER => {
                self.pending = 8;
                self.addr = 0;
                None
            }
            other => Some(DoorbellCmd::Unknown(other)),
        }
    }

    /// Whether the decoder is in the middle of a register command.
    pub const fn is_mid_command(&self) -> bool {
        self.pending > 0
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
        let mut buf = [0u8; 9];
        let n = encode(DoorbellCmd::Register(0x1234_5678_9abc_d000), &mut buf);
        let (cmds, count) = decode_all(&buf[..n]);
        assert_eq!(count, 1);
        assert_eq!(cmds[0], Some(DoorbellCmd::Register(0x1234_5678_9abc_d000)));
    }

    #[test]
    fn a_stream_of_commands_decodes_in_order() {
        let mut stream = [0u8; 12];
        stream[0] = CMD_RING;
        encode(
            DoorbellCmd::Register(0x5000),
            (&mut stream[1..10]).try_into().unwrap(),
        );
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
}
