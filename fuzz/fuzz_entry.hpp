#pragma once
// Each target's entry point: LLVMFuzzerTestOneInput under libFuzzer (SIGSCI_FUZZ builds), and a
// plain function named after the target in the test suite, which replays the seed inputs and
// every crash the fuzzers found (tests/fuzz_replay_test.cpp).
#include <cstddef>
#include <cstdint>

#ifdef SIGSCI_LIBFUZZER
#define SIGSCI_FUZZ_TARGET(name) \
    extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
#else
#define SIGSCI_FUZZ_TARGET(name) int sigsci_fuzz_##name(const std::uint8_t* data, std::size_t size)
#endif
