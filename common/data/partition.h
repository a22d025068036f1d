#pragma once
// Replayable partitions of one data set across simulated clients: IID, label skew (Dirichlet,
// McMahan shards), quantity skew and feature skew, following NIID-Bench (Li et al. 2021,
// "Federated Learning on Non-IID Data Silos"). A partition is a pure function of the labels
// and the options (seed included) and can be saved to / loaded from JSON, so that a run can
// be replayed or compared against another strategy on exactly the same split.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace fl {

struct PartitionOptions {
  std::string method = "iid";     // iid | dirichlet | shards | quantity | feature
  int num_clients = 10;
  double alpha = 0.5;             // dirichlet label skew; also quantity skew (dirichlet sizes)
  int64_t min_samples = 10;       // dirichlet/quantity: resample until every client has >= this many
  int shards_per_client = 2;      // shards
  std::string quantity_distribution = "dirichlet";  // quantity: dirichlet | lognormal
  double lognormal_sigma = 1.0;   // quantity + lognormal
  std::string feature_skew = "noise";  // feature: noise | rotation
  double feature_level = 0.1;     // feature: max Gaussian noise std, or max |rotation| in degrees
  double client_test_fraction = 0.0;   // in [0,1): per-client split of its indices into train/test
  uint64_t seed = 0;

  // Checks the options that do not depend on the data set; throws std::invalid_argument
  // naming the field ("PartitionOptions.alpha must be > 0, got -1"). Names are checked for
  // every method (an unknown feature_skew is an error even with method "iid").
  void validate() const;
  bool operator==(const PartitionOptions& o) const;
  bool operator!=(const PartitionOptions& o) const { return !(*this == o); }
};

struct ClientShard {
  std::vector<int64_t> train;     // indices into the source data set
  std::vector<int64_t> test;      // empty when client_test_fraction == 0
  double noise_std = 0.0;         // feature skew transform for this client
  double rotation_deg = 0.0;      // counter-clockwise as displayed (row 0 on top), see apply_feature_skew

  bool operator==(const ClientShard& o) const;
  bool operator!=(const ClientShard& o) const { return !(*this == o); }
};

struct Partition {
  PartitionOptions options;
  int64_t dataset_size = 0;
  std::vector<ClientShard> clients;

  bool operator==(const Partition& o) const;
  bool operator!=(const Partition& o) const { return !(*this == o); }
};

// Splits indices [0, labels.size()) across opt.num_clients clients. Every method assigns each
// index to exactly one client (train or test); the result is deterministic for a seed with the
// same standard library (std::gamma/normal_distribution are implementation-defined; the
// shuffles and uniform draws are not).
//   iid:       shuffle, split into nearly equal parts (the first N % K clients get one more).
//   dirichlet: NIID-Bench "noniid-labeldir": per class p ~ Dir(alpha), clients already at
//              >= N/K get p_j = 0; repeat until every client has >= min_samples (1000 tries).
//   shards:    sort by label (stable), cut into K*shards_per_client shards of size N/(K*spc)
//              (sizes differ by at most 1 when not divisible), spc random shards per client.
//   quantity:  NIID-Bench "iid-diff-quantity": shuffled indices split at sizes drawn from
//              Dir(alpha) (resampled until every size >= min_samples) or lognormal
//              (p_j ∝ exp(N(0, sigma)); min_samples each, the rest split by p).
//   feature:   iid split; per client noise_std ~ U(0, level) or rotation_deg ~ U(-level, level).
// client_test_fraction f > 0 then moves round(f*n) of each client's n (shuffled) indices to
// its test list: at least 1 when n >= 2, and never all of them (train keeps >= 1).
// Throws std::invalid_argument for bad options (validate()), num_clients > N, shards or
// min_samples that cannot fit, labels outside [0, num_classes); std::runtime_error when the
// Dirichlet resampling gives up.
Partition make_partition(const std::vector<int64_t>& labels, int64_t num_classes, const PartitionOptions& opt);

// JSON {"format": "fl-partition", "version": 1, "options": {...}, "dataset_size": N,
// "clients": [{"train": [...], "test": [...], "noise_std": s, "rotation_deg": d}, ...]}.
// Written atomically (write_file_atomically), so a reader never sees a half-written file.
void save_partition(const Partition& p, const std::string& path);

// Reads and validates a saved partition: JSON syntax, format/version, required fields and
// their types (options.method/num_clients/seed, dataset_size, clients[i].train; the other
// fields default), options.validate(), clients.size() == num_clients, every index in
// [0, dataset_size) and in at most one client list. Errors are std::runtime_error starting
// with the path. Coverage of the whole data set is not required (hand-made subsets load).
Partition load_partition(const std::string& path);

// Per-client class histogram as an aligned text table: a header
// "client  n_train  n_test  c0  c1 ..." and one row per client with its id, number of train
// and test indices and its count of train indices per class (so a row's class counts sum to
// n_train). Throws std::invalid_argument when labels.size() != p.dataset_size or a label is
// outside [0, num_classes).
std::string partition_table(const Partition& p, const std::vector<int64_t>& labels, int64_t num_classes);

// Applies a client's feature-skew transform to a batch of float images [N,C,H,W] on any device:
// rotation first (bilinear affine_grid/grid_sample, align_corners=false, zeros outside the
// source), then Gaussian noise with std noise_std drawn once from a CPU generator seeded with
// `seed` (so the noise is the same on every device; pass e.g. options.seed + client id).
// Positive rotation_deg turns the picture counter-clockwise as displayed with row 0 on top
// (torchvision's convention; 90 degrees maps [[1,2,3],[4,5,6],[7,8,9]] to
// [[3,6,9],[2,5,8],[1,4,7]], like numpy.rot90). The rotation is in pixel space, so a
// non-square image is not sheared. Identity (returns `images` itself) when both are 0.
// Throws std::invalid_argument for a non-4-D or non-floating tensor or a negative noise_std.
at::Tensor apply_feature_skew(const at::Tensor& images, const ClientShard& shard, uint64_t seed);

// Helper for callers holding labels as a tensor: a 1-D integer tensor (any device) as int64s.
std::vector<int64_t> labels_to_vector(const at::Tensor& labels);

}  // namespace fl
