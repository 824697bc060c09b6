//! leadership: being built (see its issue).
