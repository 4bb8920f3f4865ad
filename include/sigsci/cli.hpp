#pragma once

namespace sigsci {

// The command line: run (default), check, sign, --version. Returns the process exit code:
// 0 ok, 1 runtime failure, 2 usage or config error.
int run_cli(int argc, char** argv);

}  // namespace sigsci
