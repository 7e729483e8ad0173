//! A consumer node: holds subscriptions, sequences owned topics and fans messages out.
