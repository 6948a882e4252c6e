#include "launch/engine_options.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdlib>

#include "comm/host_pages.h"
#include "model/kernels.h"

namespace zr::cli {

EngineOptions EngineCliOptions::engine_options() const {
  EngineOptions e;
  e.threads = threads;
  e.kv_cache_bytes = static_cast<size_t>(kv_cache_mb) << 20;
  e.kv_block_size = kv_block_size;
  e.copy_weights = !mmap_weights;
  e.kv_prefault = !kv_lazy_pages;
  e.detokenize = !no_detokenize;
  e.compute = compute == "bf16" ? kernels::Compute::bf16 : kernels::Compute::f32;
  e.kv_dtype = kv_dtype == "bf16" ? DType::bf16 : DType::f32;
  e.scheduler.max_running = max_running;
  e.scheduler.max_step_tokens = max_step_tokens;
  e.scheduler.max_prefill_chunk = max_prefill_chunk;
  e.scheduler.prefix_cache = !no_prefix_cache;
  return e;
}

std::string EngineCliOptions::describe() const {
  return "model=" + model + " threads=" + std::to_string(threads) + " max_running=" + std::to_string(max_running) +
         " max_step_tokens=" + std::to_string(max_step_tokens) +
         " max_prefill_chunk=" + std::to_string(max_prefill_chunk) + " kv_cache_mb=" + std::to_string(kv_cache_mb) +
         " kv_block_size=" + std::to_string(kv_block_size) + (mmap_weights ? " mmap_weights" : "") +
         (kv_lazy_pages ? " kv_lazy_pages" : "") + (no_detokenize ? " no_detokenize" : "") + " compute=" + compute +
         " kv_dtype=" + kv_dtype + (no_prefix_cache ? " no_prefix_cache" : "");
}

void add_engine_options(CLI::App* cmd, EngineCliOptions& o) {
  cmd->add_option("--model", o.model,
                  "model folder (config.json, *.safetensors; tokenizer.json or tokenizer.model, none: token ids only)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--threads", o.threads, "compute threads (0 = all cores)")->capture_default_str();
  cmd->add_option("--max-running", o.max_running, "max sequences in the running batch")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-step-tokens", o.max_step_tokens, "token budget of one forward step")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-prefill-chunk", o.max_prefill_chunk, "prompt tokens of one request per step")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--kv-cache-mb", o.kv_cache_mb, "KV cache budget in MiB")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--kv-block-size", o.kv_block_size, "positions per KV block")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_flag(
      "--mmap-weights", o.mmap_weights,
      "serve weights from the checkpoint's file mapping (no copy; default: a copy in huge pages, faster decode)");
  cmd->add_flag("--kv-lazy-pages", o.kv_lazy_pages,
                "fault KV pages in on first write (no memory for an unused budget; default: all at start-up, "
                "no page faults in forward steps)");
  cmd->add_flag(
      "--no-detokenize", o.no_detokenize,
      "never decode output ids: text fields stay empty and stop strings are refused (RLinf's detokenize off)");
  cmd->add_option("--compute", o.compute,
                  "how matmuls multiply: f32, or bf16 (activations and weights rounded to bf16, f32 accumulation "
                  "with vdpbf16ps; batch-invariant within the mode)")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "bf16"}));
  cmd->add_option("--kv-dtype", o.kv_dtype,
                  "KV cache element type: f32, or bf16 (K and V rounded to bf16 when written: half the bytes, twice "
                  "the positions per --kv-cache-mb; batch-invariant within the setting)")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "bf16"}));
  cmd->add_flag("--no-prefix-cache", o.no_prefix_cache,
                "never reuse the KV of an equal token prefix across requests (default: full KV blocks are cached, "
                "keyed by weight version, LRU-evicted before any preemption; outputs are the same bits either way)");
  cmd->add_option("--log-level", o.log_level, "trace|debug|info|warn|error")->capture_default_str();
}

void set_process_logger(const std::string& actor, const std::string& level) {
  const char* rank = std::getenv("OMPI_COMM_WORLD_RANK");
  auto logger = spdlog::stderr_color_mt(actor + "@rank" + (rank ? rank : "0"));
  logger->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%^%l%$] [%n] %v");
  spdlog::set_default_logger(logger);
  spdlog::set_level(spdlog::level::from_str(level));
}

void log_startup(const std::string& command, const EngineCliOptions& o) {
  set_process_logger(command, o.log_level);
  spdlog::info("{}: {}", command, o.describe());
  spdlog::info("kernels: {} (batch-invariant matmul; OpenBLAS is not on the forward path)",
               kernels::using_avx512() ? "AVX-512" : "portable");
  if (const char* ct = std::getenv("OPENBLAS_CORETYPE"))
    spdlog::warn("OPENBLAS_CORETYPE={} forces OpenBLAS's core type; benchmarks that compare with sgemm use it", ct);
  // ipc weight updates through shared-memory segments run in 4 KiB pages without shmem THP: a
  // fresh segment's first push costs ~30x one memcpy (README, weight sync).
  if (command == "serve" && !shmem_thp_available())
    spdlog::warn(
        "ipc weight updates: {}: shared-memory segments are mapped in 4 KiB pages here (first pushes ~30x "
        "one memcpy); fix: echo advise > /sys/kernel/mm/transparent_hugepage/shmem_enabled, or publish "
        "with ZR_IPC_MODE=pull",
        thp_line());
}

}  // namespace zr::cli
