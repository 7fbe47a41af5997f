//! Circuit analysis (in progress).
