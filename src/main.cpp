#include "sigsci/cli.hpp"

int main(int argc, char** argv) {
    return sigsci::run_cli(argc, argv);
}
