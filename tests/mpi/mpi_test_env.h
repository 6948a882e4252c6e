// Shared by the MPI gtest binaries (tests/mpi): mpi_test_main.cpp initializes MPI through
// MpiGroup::init and runs every test on every rank; tests reach the world group here.
#pragma once

#include "comm/mpi_group.h"

namespace zr::testing {

// The world group of this process (valid from main() until RUN_ALL_TESTS returns).
MpiGroup& world();

}  // namespace zr::testing
