#include "runtime/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdlib>

namespace zr {

std::string actor_logger_name(const std::string& name, std::optional<int> rank) {
  if (!rank) {
    const char* env = std::getenv("OMPI_COMM_WORLD_RANK");
    if (env && *env) rank = std::atoi(env);
  }
  return rank ? name + "@rank" + std::to_string(*rank) : name;
}

std::shared_ptr<spdlog::logger> make_actor_logger(const std::string& name, std::optional<int> rank) {
  auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  auto logger = std::make_shared<spdlog::logger>(actor_logger_name(name, rank), std::move(sink));
  logger->set_pattern(kLogPattern);
  logger->set_level(spdlog::get_level());
  return logger;
}

}  // namespace zr
