// Per-actor loggers: every line names the actor (and the MPI rank when there is one), in the same
// pattern the launch code uses for the process logger.
// Thread-safety: the returned logger and its sink are thread-safe (spdlog *_mt).
#pragma once

#include <spdlog/logger.h>

#include <memory>
#include <optional>
#include <string>

namespace zr {

inline constexpr const char* kLogPattern = "[%Y-%m-%d %H:%M:%S.%e] [%^%l%$] [%n] %v";

// "<name>@rank<r>" when `rank` is given or $OMPI_COMM_WORLD_RANK is set, else "<name>".
std::string actor_logger_name(const std::string& name, std::optional<int> rank);

// A logger writing to stderr with kLogPattern at the default logger's level. It is not put in
// spdlog's registry, so several actors may share a name (tests make many).
std::shared_ptr<spdlog::logger> make_actor_logger(const std::string& name, std::optional<int> rank);

}  // namespace zr
