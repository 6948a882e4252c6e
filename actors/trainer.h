// Trainer: the trainer side of the RL loop. Drives rollouts on engines (generate batches, collect
// results) and publishes weights under new integer versions: all tensors of a checkpoint, or a
// subset by name. One Client per engine; every call has a timeout, so a dead engine yields an
// error naming it instead of a hang.
// Thread-safety: one thread uses a Trainer.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "comm/client.h"
#include "comm/mpi_group.h"
#include "comm/messages.h"
#include "comm/status.h"
#include "model/safetensors.h"

namespace zr {

struct PublishOptions {
  std::string path = "ipc";        // ipc | disk (broadcast: under mpirun, see launch/)
  InFlightPolicy in_flight = InFlightPolicy::drain;
  bool flush_cache = false;
  std::vector<std::string> only;   // publish only these tensors (empty: all)
  uint64_t bucket_bytes = uint64_t{64} << 20;  // broadcast
  std::chrono::milliseconds timeout{std::chrono::minutes(10)};
};

struct PublishResult {
  int64_t version = 0;
  uint64_t bytes = 0;
  double seconds = 0;  // publish to last ack
  std::vector<UpdateWeightsReply> acks;  // one per engine
};

class Trainer {
 public:
  // Connects to every engine endpoint (tcp://, ipc://; inproc:// with the engines' context).
  static Result<std::unique_ptr<Trainer>> connect(const std::vector<std::string>& endpoints,
                                                  zmq::context_t* context = nullptr);

  // Publishes the tensors of a checkpoint folder. ipc: one shared-memory segment (mode 0600,
  // unlinked once every engine acked) mapped by each engine on this host; disk: each engine reads
  // the folder. All engines or an error naming the engine that refused.
  Result<PublishResult> publish(const std::string& checkpoint_dir, int64_t version, const PublishOptions& opt);
  // Path broadcast: the engines are the other ranks of `group` (the trainer is the root); the
  // tensors go in pipelined MPI_Bcast buckets, each engine verifies them as they arrive.
  Result<PublishResult> publish_broadcast(const std::string& checkpoint_dir, int64_t version, const PublishOptions& opt,
                                          MpiGroup& group);
  // Runs requests across the engines (round robin by request) and returns every sample.
  Result<std::vector<SampleOutput>> generate(const std::vector<GenerateRequest>& reqs,
                                             std::chrono::milliseconds timeout = std::chrono::minutes(10));
  Result<int64_t> weight_version(int engine = 0);
  Status shutdown_engines();
  size_t num_engines() const { return clients_.size(); }
  Client& client(int engine) { return *clients_.at(engine); }

 private:
  Result<PublishResult> publish_ipc(const std::string& dir, int64_t version, const PublishOptions& opt);
  // Tensors of a checkpoint (filtered by `only`) laid out for a transfer; the bytes are copied
  // into `dst` by fill() once its size is known.
  struct Layout {
    std::vector<TensorMeta> metas;
    std::vector<const void*> src;
    uint64_t bytes = 0;
    void fill(uint8_t* dst);
  };
  static Result<Layout> layout(const SafetensorsArchive& ar, const std::vector<std::string>& only, const std::string& dir);
  Result<PublishResult> send_update(UpdateWeightsCall call, std::chrono::milliseconds timeout);
  static UpdateWeightsCall base_call(const char* path, int64_t version, const PublishOptions& opt);

  std::vector<std::string> endpoints_;
  std::vector<std::unique_ptr<Client>> clients_;
};

}  // namespace zr
