//! library-models: being built (see its issue).
