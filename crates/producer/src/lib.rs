//! A producer node: authenticates publishers and routes each topic to its owner consumer.
