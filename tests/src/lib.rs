//! The in-process cluster harness shared by the scenario tests.
