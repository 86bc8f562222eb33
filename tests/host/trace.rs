//! Host tests of the tracer (netlink backend), each in namespaces it creates.
