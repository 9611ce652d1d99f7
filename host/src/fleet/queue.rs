//! Who goes next when a pool is saturated: waiting requests in class order (completions, then
//! chat, then agents), first come first served within a class.

use super::WorkClass;
use std::collections::VecDeque;

/// The requests waiting for a member of one pool, by class.
#[derive(Debug, Default)]
pub(crate) struct Waiting {
    by_class: [VecDeque<u64>; WorkClass::ALL.len()],
    next_ticket: u64,
}

impl Waiting {
    /// Queue a request of `class`; its ticket.
    pub(crate) fn join(&mut self, class: WorkClass) -> u64 {
        self.next_ticket += 1;
        self.by_class[class as usize].push_back(self.next_ticket);
        self.next_ticket
    }

    /// Take `ticket` out of the queue (placed, timed out or abandoned).
    pub(crate) fn leave(&mut self, class: WorkClass, ticket: u64) {
        let queue = &mut self.by_class[class as usize];
        if let Some(position) = queue.iter().position(|&t| t == ticket) {
            queue.remove(position);
        }
    }

    /// Whether a request of `class` (holding `ticket`, if it already waits) may try to take a
    /// member now: nobody of a higher class waits, and nobody of its own class waits ahead of it.
    pub(crate) fn may_go(&self, class: WorkClass, ticket: Option<u64>) -> bool {
        let higher_waits = self.by_class[..class as usize].iter().any(|queue| !queue.is_empty());
        let first_of_class = match ticket {
            Some(ticket) => self.by_class[class as usize].front() == Some(&ticket),
            None => self.by_class[class as usize].is_empty(),
        };
        !higher_waits && first_of_class
    }

    /// How many of `class` wait.
    pub(crate) fn len(&self, class: WorkClass) -> usize {
        self.by_class[class as usize].len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_classes_go_first_and_each_class_in_order() {
        let mut waiting = Waiting::default();
        let agent = waiting.join(WorkClass::Agent);
        let chat = waiting.join(WorkClass::Chat);
        let first_completion = waiting.join(WorkClass::Completion);
        let second_completion = waiting.join(WorkClass::Completion);
        assert!(!waiting.may_go(WorkClass::Agent, Some(agent)));
        assert!(!waiting.may_go(WorkClass::Chat, Some(chat)));
        assert!(!waiting.may_go(WorkClass::Completion, Some(second_completion)));
        assert!(waiting.may_go(WorkClass::Completion, Some(first_completion)));
        assert!(!waiting.may_go(WorkClass::Completion, None), "a newcomer queues behind its class");
        waiting.leave(WorkClass::Completion, first_completion);
        waiting.leave(WorkClass::Completion, second_completion);
        assert!(waiting.may_go(WorkClass::Chat, Some(chat)));
        assert!(waiting.may_go(WorkClass::Completion, None), "a newcomer of a higher class goes ahead");
        waiting.leave(WorkClass::Chat, chat);
        assert!(waiting.may_go(WorkClass::Agent, Some(agent)));
        assert_eq!((waiting.len(WorkClass::Agent), waiting.len(WorkClass::Chat)), (1, 0));
    }
}
