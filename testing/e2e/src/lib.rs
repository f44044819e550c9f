//! The end-to-end suite lives in `tests/`: each file starts the whole backend as real processes
//! through `vbase-stack` (built binaries, an ephemeral PostgreSQL, the stand-ins) and talks to it
//! over the wire. `browser/` holds the gRPC-Web client and its headless-Chromium run.
