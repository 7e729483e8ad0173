//! The shardq client library: Publisher and Subscriber for applications.
