//! Ringwall's configuration: Flex Gateway Local Mode resources, parsed and validated.
