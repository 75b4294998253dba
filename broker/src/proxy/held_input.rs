//! Vendor input held until the device has started what it is for.

use std::collections::VecDeque;

use russh::ChannelMsg;

/// The vendor's input that arrived before the device started what it is for. A device's session
/// channel has no window until its shell, exec or subsystem starts, and never gets one if the
/// device refuses it (sftp sends its first packet right behind the subsystem request): writing
/// it then would wait forever and the device's refusal would never be read. So input is held, in
/// order, until the device says yes, and dropped if it says no.
#[derive(Default)]
pub(super) struct HeldInput {
    /// Data and EOF, in the order the vendor sent them.
    msgs: VecDeque<ChannelMsg>,
    bytes: usize,
    /// The device started the channel's program: input goes straight through.
    started: bool,
}

impl HeldInput {
    /// Held input is bounded: past this, the vendor's messages wait in the SSH layer (its window
    /// then closes), not in memory here.
    const MAX: usize = 1 << 20;

    pub(super) fn has_room(&self) -> bool {
        self.bytes < Self::MAX
    }

    /// Keeps `msg` if the device has not started yet; gives it back otherwise.
    pub(super) fn hold(&mut self, msg: ChannelMsg) -> Option<ChannelMsg> {
        if self.started {
            return Some(msg);
        }
        if let ChannelMsg::Data { data } = &msg {
            self.bytes += data.len();
        }
        self.msgs.push_back(msg);
        None
    }

    /// The device said yes to `request`: if that started the program, the held input, in order,
    /// to pass on now.
    pub(super) fn started_by(&mut self, request: &str) -> VecDeque<ChannelMsg> {
        if !starts_program(request) {
            return VecDeque::new();
        }
        self.started = true;
        self.bytes = 0;
        std::mem::take(&mut self.msgs)
    }

    /// The device said no to `request`: if that was the program, nothing will ever read the
    /// held input.
    pub(super) fn refused_by(&mut self, request: &str) {
        if starts_program(request) {
            *self = HeldInput::default();
        }
    }
}

/// Whether the device's answer to `request` (as named in the session channel's pending list)
/// says if the channel's program runs.
fn starts_program(request: &str) -> bool {
    matches!(request, "shell" | "exec" | "subsystem")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> ChannelMsg {
        ChannelMsg::Data {
            data: vec![b'x'; n].into(),
        }
    }

    #[test]
    fn input_is_held_in_order_until_the_device_starts_then_passes_through() {
        let mut h = HeldInput::default();
        assert!(h.hold(data(3)).is_none());
        assert!(h.hold(ChannelMsg::Eof).is_none());
        assert!(
            h.started_by("pty-req").is_empty(),
            "a terminal is not the program"
        );
        let held: Vec<_> = h.started_by("subsystem").into_iter().collect();
        assert!(matches!(held[0], ChannelMsg::Data { ref data } if data.len() == 3));
        assert!(matches!(held[1], ChannelMsg::Eof));
        assert!(h.hold(data(1)).is_some(), "after the start nothing is held");
    }

    #[test]
    fn held_input_is_bounded_and_dropped_on_refusal() {
        let mut h = HeldInput::default();
        assert!(h.has_room());
        let _ = h.hold(data(HeldInput::MAX));
        assert!(!h.has_room());
        h.refused_by("exec");
        assert!(h.has_room());
        assert!(h.started_by("exec").is_empty());
    }
}
