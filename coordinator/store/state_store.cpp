#include "coordinator/store/state_store.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/slice.h>
#include <rocksdb/status.h>
#include <rocksdb/write_batch.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <utility>

#include "common/engine/payload.h"
#include "common/io/atomic_file.h"
#include "common/io/safetensors.h"
#include "common/util/text.h"

#include <spdlog/spdlog.h>

namespace fl {

std::string run_id_problem(const std::string& run_id) {
  if (is_plain_name(run_id)) return "";
  auto ok = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-'; };
  std::string shown;
  for (char c : run_id.substr(0, 80)) shown += ok(c) ? std::string(1, c) : "?";
  return "run id '" + shown + (run_id.size() > 80 ? "...'" : "'") + " (" + std::to_string(run_id.size()) +
         " bytes) is not valid: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or a digit";
}

namespace {

using json = nlohmann::json;

constexpr const char* kRuns = "runs";
constexpr const char* kRounds = "rounds";
constexpr const char* kModels = "models";
constexpr const char* kStrategy = "strategy";
constexpr const char* kClients = "clients";
constexpr const char* kUpdates = "updates";
constexpr const char* kAudit = "audit";
constexpr const char* kDenied = "denied";
constexpr const char* kOurFamilies[] = {kRuns, kRounds, kModels, kStrategy, kClients, kUpdates, kAudit, kDenied};

constexpr char kUpdateMeta = 'm';
constexpr char kClientByIndex = 'i';
constexpr char kClientByName = 'n';
constexpr const char kUpdateMagic[4] = {'F', 'L', 'U', '1'};

// ---- key encoding ------------------------------------------------------------------------

void put_be(std::string& s, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint64_t get_be(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

void check_run_id(const std::string& run_id) {
  if (auto why = run_id_problem(run_id); !why.empty()) throw std::invalid_argument("StateStore: " + why);
}

void check_non_negative(int v, const char* what) {
  if (v < 0) throw std::invalid_argument(std::string("StateStore: negative ") + what + " " + std::to_string(v));
}

std::string run_prefix(const std::string& run_id) {
  check_run_id(run_id);
  std::string k = run_id;
  k.push_back('\0');
  return k;
}

std::string round_key(const std::string& run_id, int round) {  // models, rounds, updates prefix
  check_non_negative(round, "round");
  std::string k = run_prefix(run_id);
  put_be(k, static_cast<uint64_t>(round), 8);
  return k;
}

// The updates of one exchange of a round: run_id \0 BE64(round) phase \0
std::string phase_key(const std::string& run_id, int round, const std::string& phase) {
  if (!valid_phase_name(phase)) throw std::invalid_argument("StateStore: invalid phase name '" + phase + "'");
  std::string k = round_key(run_id, round);
  k += phase;
  k.push_back('\0');
  return k;
}

std::string update_key(const std::string& run_id, int round, const std::string& phase, int client, char tag) {
  check_non_negative(client, "client index");
  std::string k = phase_key(run_id, round, phase);
  put_be(k, static_cast<uint64_t>(client), 4);
  k.push_back(tag);
  return k;
}

std::string client_index_key(const std::string& run_id, int index) {
  std::string k = run_prefix(run_id);
  k.push_back(kClientByIndex);
  put_be(k, static_cast<uint64_t>(index), 4);
  return k;
}

std::string client_name_key(const std::string& run_id, const std::string& name) {
  std::string k = run_prefix(run_id);
  k.push_back(kClientByName);
  k += name;
  return k;
}

bool starts_with(const rocksdb::Slice& s, const std::string& prefix) {
  return s.size() >= prefix.size() && std::memcmp(s.data(), prefix.data(), prefix.size()) == 0;
}

// A key, readable: printable bytes as is, the rest as \xNN.
std::string escape(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

// A key of a column family, described for error messages ("run-1/round 9/client 3/meta").
std::string describe_key(const std::string& cf, const std::string& key) {
  const size_t nul = key.find('\0');
  if (cf == kRuns || cf == kStrategy || nul == std::string::npos) {
    if (cf == kAudit && key.size() == 8) return "#" + std::to_string(get_be(key.data(), 8));
    return escape(key);
  }
  const std::string run = escape(key.substr(0, nul));
  const std::string rest = key.substr(nul + 1);
  if ((cf == kModels || cf == kRounds) && rest.size() == 8)
    return run + (cf == kModels ? "/version " : "/round ") + std::to_string(get_be(rest.data(), 8));
  if (cf == kUpdates && rest.size() == 13)
    return run + "/round " + std::to_string(get_be(rest.data(), 8)) + "/client " +
           std::to_string(get_be(rest.data() + 8, 4)) + (rest[12] == kUpdateMeta ? "/meta" : "/payload");
  if (cf == kClients && rest.size() == 5 && rest[0] == kClientByIndex)
    return run + "/client " + std::to_string(get_be(rest.data() + 1, 4));
  if (cf == kClients && !rest.empty() && rest[0] == kClientByName) return run + "/name " + escape(rest.substr(1));
  return escape(key);
}

// ---- value encoding ----------------------------------------------------------------------

// JSON has no NaN/Infinity: those metrics are stored as strings.
json metric_to_json(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  return v;
}

double metric_from_json(const json& j) {
  if (j.is_number()) return j.get<double>();
  if (j.is_string()) {
    const auto s = j.get<std::string>();
    if (s == "NaN") return std::numeric_limits<double>::quiet_NaN();
    if (s == "Infinity") return std::numeric_limits<double>::infinity();
    if (s == "-Infinity") return -std::numeric_limits<double>::infinity();
  }
  throw std::runtime_error("metric value is not a number: " + j.dump());
}

std::string encode_run(const RunRecord& r) {
  json j{{"run_id", r.run_id},
         {"config_json", r.config_json},
         {"state", r.state},
         {"current_round", r.current_round},
         {"total_rounds", r.total_rounds},
         {"created_at", r.created_at},
         {"started_at", r.started_at},
         {"ended_at", r.ended_at}};
  return j.dump();
}

RunRecord decode_run(const std::string& v) {
  const json j = json::parse(v);
  RunRecord r;
  r.run_id = j.at("run_id").get<std::string>();
  r.config_json = j.at("config_json").get<std::string>();
  r.state = j.at("state").get<std::string>();
  r.current_round = j.at("current_round").get<int>();
  r.total_rounds = j.at("total_rounds").get<int>();
  r.created_at = j.value("created_at", 0.0);  // absent in records written before run management
  r.started_at = j.value("started_at", 0.0);
  r.ended_at = j.value("ended_at", 0.0);
  return r;
}

std::string encode_client(const ClientRecord& c) {
  json j{{"index", c.index},
         {"name", c.name},
         {"num_train_examples", c.num_train_examples},
         {"num_test_examples", c.num_test_examples},
         {"registered_at", c.registered_at}};
  if (!c.model_json.empty()) j["model"] = json::parse(c.model_json);
  return j.dump();
}

ClientRecord decode_client(const std::string& v) {
  const json j = json::parse(v);
  ClientRecord c;
  c.index = j.at("index").get<int>();
  c.name = j.at("name").get<std::string>();
  c.num_train_examples = j.at("num_train_examples").get<int64_t>();
  c.num_test_examples = j.at("num_test_examples").get<int64_t>();
  c.registered_at = j.at("registered_at").get<double>();
  if (j.contains("model")) c.model_json = j.at("model").dump();
  return c;
}

// Update metadata: magic, BE32 length of the JSON, the JSON, then the manifest bytes (binary).
std::string encode_update_meta(const StoredUpdate& u, uint64_t payload_bytes) {
  json metrics = json::object();
  for (const auto& [k, v] : u.metrics) metrics[k] = metric_to_json(v);
  const std::string head =
      json{{"round", u.round}, {"phase", u.phase}, {"client_index", u.client_index}, {"num_examples", u.num_examples},
           {"metrics", std::move(metrics)}, {"payload_bytes", payload_bytes}}
          .dump();
  std::string out(kUpdateMagic, sizeof kUpdateMagic);
  put_be(out, head.size(), 4);
  out += head;
  out += u.manifest;
  return out;
}

StoredUpdate decode_update_meta(const std::string& v, uint64_t* payload_bytes) {
  if (v.size() < 8 || std::memcmp(v.data(), kUpdateMagic, 4) != 0)
    throw std::runtime_error("bad update header (" + std::to_string(v.size()) + " bytes)");
  const uint64_t n = get_be(v.data() + 4, 4);
  if (n > v.size() - 8)
    throw std::runtime_error("update metadata length " + std::to_string(n) + " exceeds the value (" +
                             std::to_string(v.size()) + " bytes)");
  const json j = json::parse(v.substr(8, n));
  StoredUpdate u;
  u.round = j.at("round").get<int>();
  u.phase = j.at("phase").get<std::string>();
  u.client_index = j.at("client_index").get<int>();
  u.num_examples = j.at("num_examples").get<int64_t>();
  for (const auto& [k, m] : j.at("metrics").items()) u.metrics[k] = metric_from_json(m);
  *payload_bytes = j.at("payload_bytes").get<uint64_t>();
  u.manifest = v.substr(8 + n);
  return u;
}

// ---- update payload files ------------------------------------------------------------------

std::string hex(const std::string& s) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

// hex()'s inverse (std::invalid_argument on a non-hex digit; an odd last digit is ignored).
std::string unhex(const std::string& h) {
  std::string out;
  for (size_t i = 0; i + 1 < h.size(); i += 2) out.push_back(static_cast<char>(std::stoi(h.substr(i, 2), nullptr, 16)));
  return out;
}

// Hex of the run id (at most 64 characters: 128) keeps the name portable and under 255 bytes.
std::string payload_file_name(const std::string& run_id, int round, const std::string& phase, int client) {
  return hex(run_id) + "-" + std::to_string(round) + "-" + phase + "-" + std::to_string(client) + ".bin";
}

// ---- model files ---------------------------------------------------------------------------
// A model version's record in the models family: kModelFileTag, BE64(file size), file name (in
// <dir>/models). Older stores hold the safetensors bytes themselves, which cannot start with
// the tag (their first 8 bytes are the header's length, far below 2^32).
constexpr char kModelFileTag[] = "FLM1";

std::string model_file_name(const std::string& run_id, int version) {
  return hex(run_id) + "-" + std::to_string(version) + ".safetensors";
}

// The file a model record names, or "" for an older store's inline safetensors bytes.
std::string model_record_file(const std::string& v) {
  return v.size() > 12 && v.compare(0, 4, kModelFileTag) == 0 ? v.substr(12) : "";
}

[[noreturn]] void io_fail(const std::string& what, const std::string& path) {
  throw std::runtime_error("StateStore: cannot " + what + " '" + path + "': " + std::strerror(errno));
}


// Exactly n bytes of fd at offset into out; io_fail naming `path` on an error or a short file.
void pread_exact(int fd, uint64_t offset, size_t n, char* out, const std::string& path) {
  size_t done = 0;
  while (done < n) {
    const ssize_t r = ::pread(fd, out + done, n - done, static_cast<off_t>(offset + done));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) io_fail("read file", path);
    done += static_cast<size_t>(r);
  }
}

// n bytes of fd from offset 0 into out (resized to n, its capacity reused).
void pread_all(int fd, size_t n, std::string& out, const std::string& path) {
  out.resize(n);
  pread_exact(fd, 0, n, out.data(), path);
}

// The whole file into out (resized to the file's size, its capacity reused): one allocation and
// large reads, where an istreambuf_iterator grew the string by doubling, a byte at a time.
void read_file_into(const std::string& path, std::string& out) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) io_fail("open file", path);
  struct stat st;
  try {
    if (::fstat(fd, &st) != 0) io_fail("stat file", path);
    pread_all(fd, static_cast<size_t>(st.st_size), out, path);
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
}

std::string read_file(const std::string& path) {
  std::string out;
  read_file_into(path, out);
  return out;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

// ---- Impl ----------------------------------------------------------------------------------

struct StateStore::Impl {
  std::string dir;
  rocksdb::DB* db = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;  // every family opened (ours and foreign)
  std::map<std::string, rocksdb::ColumnFamilyHandle*> cf;
  std::mutex clients_mu;  // register_client: lookup + allocate + write
  std::mutex audit_mu;
  uint64_t next_audit = 0;
  std::array<std::mutex, 64> update_mu;  // UpdateWriter::commit: check + write, striped by key
  std::string payload_dir;                // <dir>/payloads
  std::string model_dir;                  // <dir>/models
  size_t orphans_collected = 0;           // by collect_orphans, when the store opened
  std::atomic<uint64_t> next_tmp{0};      // unique temporary payload file names

  std::mutex& update_lock(const std::string& meta_key) {
    return update_mu[std::hash<std::string>{}(meta_key) % update_mu.size()];
  }

  rocksdb::WriteOptions sync_write() const {
    rocksdb::WriteOptions w;
    w.sync = true;
    return w;
  }

  [[noreturn]] void fail(const std::string& op, const rocksdb::Status& s) const {
    throw std::runtime_error("StateStore(" + dir + "): " + op + ": " + s.ToString());
  }
  void check(const rocksdb::Status& s, const std::string& op) const {
    if (!s.ok()) fail(op, s);
  }
  [[noreturn]] void corrupt(const std::string& family, const std::string& key, const std::string& why) const {
    throw std::runtime_error("StateStore(" + dir + "): corrupt value in column family '" + family + "' at key '" +
                             describe_key(family, key) + "': " + why);
  }

  // Runs a decoder, turning any exception into a "corrupt value" error naming family and key.
  template <class F>
  auto decode(const std::string& family, const std::string& key, F&& f) const -> decltype(f()) {
    try {
      return f();
    } catch (const std::exception& ex) {
      corrupt(family, key, ex.what());
    }
  }

  rocksdb::ColumnFamilyHandle* h(const char* family) const { return cf.at(family); }

  // The update whose metadata `value` is stored at `key`, decoded and checked against the round,
  // phase and client the key names; with `payload`, its payload file read into it and checked
  // against the size the metadata records. A mismatch is a corrupt value naming the key.
  StoredUpdate stored_update(const std::string& key, const std::string& value, const std::string& run_id, int round,
                             const std::string& phase, int client, std::string* payload) const {
    uint64_t payload_bytes = 0;
    StoredUpdate u = decode(kUpdates, key, [&] { return decode_update_meta(value, &payload_bytes); });
    if (u.round != round || u.client_index != client || u.phase != phase)
      corrupt(kUpdates, key, "the value is for round " + std::to_string(u.round) + " " + u.phase + ", client " +
                                 std::to_string(u.client_index));
    if (!payload) return u;
    const std::string path = payload_dir + "/" + payload_file_name(run_id, round, phase, client);
    decode(kUpdates, key, [&] {
      read_file_into(path, *payload);
      return 0;
    });
    if (payload->size() != payload_bytes)
      corrupt(kUpdates, key, "payload file '" + path + "' has " + std::to_string(payload->size()) +
                                 " bytes, the metadata says " + std::to_string(payload_bytes));
    return u;
  }

  std::optional<std::string> get(const char* family, const std::string& key) const {
    std::string v;
    const auto s = db->Get(rocksdb::ReadOptions(), h(family), key, &v);
    if (s.IsNotFound()) return std::nullopt;
    check(s, std::string("get ") + family + "/" + describe_key(family, key));
    return v;
  }

  bool exists(const char* family, const std::string& key) const {
    rocksdb::PinnableSlice v;
    const auto s = db->Get(rocksdb::ReadOptions(), h(family), key, &v);
    if (s.IsNotFound()) return false;
    check(s, std::string("get ") + family + "/" + describe_key(family, key));
    return true;
  }

  void put(const char* family, const std::string& key, const std::string& value) {
    check(db->Put(sync_write(), h(family), key, value), std::string("put ") + family + "/" + describe_key(family, key));
  }

  void write(rocksdb::WriteBatch& b, const std::string& what) { check(db->Write(sync_write(), &b), what); }

  // Calls f(key, value) for every entry whose key starts with `prefix`, in key order.
  void scan(const char* family, const std::string& prefix,
            const std::function<void(const rocksdb::Slice&, const rocksdb::Slice&)>& f) const {
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), h(family)));
    for (it->Seek(prefix); it->Valid() && starts_with(it->key(), prefix); it->Next()) f(it->key(), it->value());
    check(it->status(), std::string("scan ") + family);
  }

  // Last key with `prefix` and exactly `prefix.size() + tail` bytes (fixed-width numeric tails).
  std::optional<std::string> last_key(const char* family, const std::string& prefix, size_t tail) const {
    std::string upper = prefix + std::string(tail, '\xff');
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), h(family)));
    for (it->SeekForPrev(upper); it->Valid() && starts_with(it->key(), prefix); it->Prev()) {
      if (it->key().size() == prefix.size() + tail) return it->key().ToString();
    }
    check(it->status(), std::string("scan ") + family);
    return std::nullopt;
  }
};

namespace {

rocksdb::ColumnFamilyOptions family_options(const std::string& name) {
  rocksdb::ColumnFamilyOptions o;
  if (name == kModels || name == kUpdates) {
    // Models and payloads are large, incompressible values: keep them out of the LSM tree
    // (integrated BlobDB) so that compactions do not rewrite them.
    o.enable_blob_files = true;
    o.min_blob_size = 4096;
    o.enable_blob_garbage_collection = true;
    o.compression = rocksdb::kNoCompression;
  }
  return o;
}

}  // namespace

StateStore::StateStore(const std::string& dir) : impl_(std::make_unique<Impl>()) {
  impl_->dir = dir;
  impl_->payload_dir = dir + "/payloads";
  impl_->model_dir = dir + "/models";
  rocksdb::DBOptions options;
  options.create_if_missing = true;
  options.create_missing_column_families = true;
  options.keep_log_file_num = 4;
  options.max_manifest_file_size = 64ull << 20;

  // An existing database must be opened with all of its column families.
  std::vector<std::string> names;
  const auto listed = rocksdb::DB::ListColumnFamilies(options, dir, &names);
  if (!listed.ok()) names.clear();  // a new database (a real problem surfaces in Open below)
  if (std::find(names.begin(), names.end(), rocksdb::kDefaultColumnFamilyName) == names.end())
    names.insert(names.begin(), rocksdb::kDefaultColumnFamilyName);
  for (const char* ours : kOurFamilies)
    if (std::find(names.begin(), names.end(), ours) == names.end()) names.push_back(ours);

  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  for (const auto& n : names) descriptors.emplace_back(n, family_options(n));
  const auto s = rocksdb::DB::Open(options, dir, descriptors, &impl_->handles, &impl_->db);
  if (!s.ok()) throw std::runtime_error("StateStore: cannot open RocksDB database at '" + dir + "': " + s.ToString());
  for (size_t i = 0; i < names.size(); ++i) impl_->cf[names[i]] = impl_->handles[i];

  if (auto last = impl_->last_key(kAudit, "", 8)) impl_->next_audit = get_be(last->data(), 8) + 1;
  std::error_code ec;
  for (const auto* d : {&impl_->payload_dir, &impl_->model_dir}) {
    std::filesystem::create_directories(*d, ec);
    if (ec) throw std::runtime_error("StateStore: cannot create '" + *d + "': " + ec.message());
  }
  collect_orphans();
}

// A crash leaves two kinds of payload files behind: a temporary one of an upload in flight
// (".tmp.<pid>.<n>": nothing refers to it) and, between the rename and the metadata write, a
// complete one without its record (the update was never acknowledged, the client sends it
// again). Neither is read again: they go when the store opens (RocksDB's lock makes this the
// only process using the directory). A file whose name does not parse is left alone.
void StateStore::collect_orphans() {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(impl_->payload_dir, ec)) {
    const std::string name = entry.path().filename().string();
    bool orphan = name.find(".tmp.") != std::string::npos;
    if (!orphan && name.size() > 4 && name.compare(name.size() - 4, 4, ".bin") == 0) {
      // <hex run id>-<round>-<phase>-<client>.bin; the phase may hold '-' ("fit-2").
      const std::string stem = name.substr(0, name.size() - 4);
      const size_t first = stem.find('-'), second = stem.find('-', first + 1), last = stem.rfind('-');
      if (first == std::string::npos || second == std::string::npos || last <= second) continue;
      try {
        const std::string run_id = unhex(stem.substr(0, first));
        const int round = std::stoi(stem.substr(first + 1, second - first - 1));
        const std::string phase = stem.substr(second + 1, last - second - 1);
        const int client = std::stoi(stem.substr(last + 1));
        orphan = payload_file_name(run_id, round, phase, client) == name && !has_update(run_id, round, client, phase);
      } catch (const std::exception&) {
        continue;  // not a name we wrote (or a run id an older version allowed): not ours to judge
      }
    }
    if (orphan && std::filesystem::remove(entry.path(), ec)) ++impl_->orphans_collected;
  }
  // Model files: a temporary one of a commit in flight, or a complete one whose commit never
  // happened (the crash came between its rename and the round's batch).
  size_t models = 0;
  for (const auto& entry : std::filesystem::directory_iterator(impl_->model_dir, ec)) {
    const std::string name = entry.path().filename().string();
    bool orphan = name.find(".tmp") != std::string::npos;
    const std::string ext = ".safetensors";
    const size_t dash = name.rfind('-');
    if (!orphan && name.size() > ext.size() && dash != std::string::npos &&
        name.compare(name.size() - ext.size(), ext.size(), ext) == 0) {
      try {
        const std::string run_id = unhex(name.substr(0, dash));
        const int version = std::stoi(name.substr(dash + 1, name.size() - ext.size() - dash - 1));
        if (model_file_name(run_id, version) != name) continue;
        const auto v = impl_->get(kModels, round_key(run_id, version));
        orphan = !v || model_record_file(*v) != name;
      } catch (const std::exception&) {
        continue;
      }
    }
    if (orphan && std::filesystem::remove(entry.path(), ec)) ++models;
  }
  impl_->orphans_collected += models;
  if (impl_->orphans_collected > 0) {
    spdlog::info("StateStore: removed {} orphan payload and {} orphan model file(s) left by an earlier crash",
                 impl_->orphans_collected - models, models);
    sync_directory(impl_->payload_dir);
    sync_directory(impl_->model_dir);
  }
}

size_t StateStore::orphans_collected() const { return impl_->orphans_collected; }

StateStore::~StateStore() {
  if (!impl_ || !impl_->db) return;
  for (auto* handle : impl_->handles) impl_->db->DestroyColumnFamilyHandle(handle);
  impl_->db->Close();
  delete impl_->db;
}

const std::string& StateStore::dir() const { return impl_->dir; }

// ---- runs

std::optional<RunRecord> StateStore::load_run(const std::string& run_id) const {
  check_run_id(run_id);
  auto v = impl_->get(kRuns, run_id);
  if (!v) return std::nullopt;
  return impl_->decode(kRuns, run_id, [&] { return decode_run(*v); });
}

void StateStore::save_run(const RunRecord& run) {
  check_run_id(run.run_id);
  impl_->put(kRuns, run.run_id, encode_run(run));
}

std::vector<RunRecord> StateStore::list_runs() const {
  std::vector<RunRecord> out;
  impl_->scan(kRuns, "", [&](const rocksdb::Slice& k, const rocksdb::Slice& v) {
    out.push_back(impl_->decode(kRuns, k.ToString(), [&] { return decode_run(v.ToString()); }));
  });
  return out;
}

// ---- clients

std::optional<int> StateStore::client_index(const std::string& run_id, const std::string& name) const {
  const std::string key = client_name_key(run_id, name);
  auto v = impl_->get(kClients, key);
  if (!v) return std::nullopt;
  if (v->size() != 4) impl_->corrupt(kClients, key, "expected a 4-byte index, got " + std::to_string(v->size()) + " bytes");
  return static_cast<int>(get_be(v->data(), 4));
}

int StateStore::register_client(const std::string& run_id, const std::string& name, int64_t n_train, int64_t n_test,
                                const std::string& model_json, int wanted) {
  std::lock_guard<std::mutex> lock(impl_->clients_mu);
  if (auto known = client_index(run_id, name)) {
    if (wanted >= 0 && *known != wanted)
      throw std::invalid_argument("client '" + name + "' of run '" + run_id + "' is #" + std::to_string(*known) +
                                  ", not #" + std::to_string(wanted));
    const std::string key = client_index_key(run_id, *known);
    auto v = impl_->get(kClients, key);
    if (!v) impl_->corrupt(kClients, key, "a client name without its record");
    ClientRecord c = impl_->decode(kClients, key, [&] { return decode_client(*v); });
    if (c.model_json != model_json) {  // the site now trains another model
      c.model_json = model_json;
      impl_->put(kClients, key, encode_client(c));
    }
    return *known;
  }
  int index = 0;
  const std::string prefix = run_prefix(run_id) + kClientByIndex;
  if (auto last = impl_->last_key(kClients, prefix, 4)) index = static_cast<int>(get_be(last->data() + prefix.size(), 4)) + 1;
  if (wanted >= 0) {
    if (impl_->get(kClients, client_index_key(run_id, wanted)))
      throw std::invalid_argument("client #" + std::to_string(wanted) + " of run '" + run_id +
                                  "' is registered under another name");
    index = wanted;
  }

  ClientRecord c;
  c.index = index;
  c.name = name;
  c.num_train_examples = n_train;
  c.num_test_examples = n_test;
  c.registered_at = now_seconds();
  c.model_json = model_json;
  std::string idx;
  put_be(idx, static_cast<uint64_t>(index), 4);
  rocksdb::WriteBatch b;
  impl_->check(b.Put(impl_->h(kClients), client_index_key(run_id, index), encode_client(c)), "batch");
  impl_->check(b.Put(impl_->h(kClients), client_name_key(run_id, name), idx), "batch");
  impl_->write(b, "register client '" + name + "' in run '" + run_id + "'");
  return index;
}

std::vector<ClientRecord> StateStore::clients(const std::string& run_id) const {
  std::vector<ClientRecord> out;
  impl_->scan(kClients, run_prefix(run_id) + kClientByIndex, [&](const rocksdb::Slice& k, const rocksdb::Slice& v) {
    out.push_back(impl_->decode(kClients, k.ToString(), [&] { return decode_client(v.ToString()); }));
  });
  return out;
}

// ---- updates

StateStore::UpdateWriter::UpdateWriter(StateStore& store, std::string run_id, int round, std::string phase, int client)
    : store_(store), run_id_(std::move(run_id)), phase_(std::move(phase)), round_(round), client_(client) {
  const auto& impl = *store_.impl_;
  final_path_ = impl.payload_dir + "/" + payload_file_name(run_id_, round, phase_, client);
  tmp_path_ = final_path_ + ".tmp." + std::to_string(::getpid()) + "." +
              std::to_string(store_.impl_->next_tmp.fetch_add(1));
  fd_ = ::open(tmp_path_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);  // read_back() reads it
  if (fd_ < 0) io_fail("create payload file", tmp_path_);
  thread_ = std::thread([this] {
#ifdef __linux__
    pthread_setname_np(pthread_self(), "fl-payload-wr");  // visible in top -H and perf
#endif
    write_loop();
  });
}

StateStore::UpdateWriter::~UpdateWriter() {
  try {
    finish_writes();
  } catch (...) {  // nothing to report to: the payload is discarded anyway
  }
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_path_.c_str());  // best effort: an orphan is harmless
}

void StateStore::UpdateWriter::append(std::string bytes) {
  if (committed_ || !thread_.joinable()) throw std::logic_error("StateStore::UpdateWriter: append after commit");
  appended_ += bytes.size();
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return queued_bytes_ < kMaxQueuedBytes || !error_.empty(); });
  if (!error_.empty()) return;  // commit() reports it
  queued_bytes_ += bytes.size();
  queue_.push_back(std::move(bytes));
  lock.unlock();
  cv_.notify_all();
}

void StateStore::UpdateWriter::write_loop() {
  for (;;) {
    std::string chunk;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return !queue_.empty() || closing_; });
      if (queue_.empty()) return;  // closing and drained
      chunk = std::move(queue_.front());
      queue_.pop_front();
    }
    const char* data = chunk.data();
    size_t n = chunk.size();
    while (n > 0) {
      const ssize_t w = ::write(fd_, data, n);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) {
        std::lock_guard<std::mutex> lock(mu_);
        error_ = "StateStore: cannot write payload file '" + tmp_path_ + "': " + std::strerror(errno);
        queue_.clear();
        queued_bytes_ = 0;
        cv_.notify_all();
        return;
      }
      data += w;
      n -= static_cast<size_t>(w);
    }
    written_ += chunk.size();
#ifdef __linux__
    // Start the disk writeback of every 8 MiB now (asynchronously), so that the fdatasync at
    // commit only waits for the tail instead of the whole payload.
    constexpr uint64_t kWritebackBytes = uint64_t{8} << 20;
    if (written_ - writeback_from_ >= kWritebackBytes) {
      ::sync_file_range(fd_, static_cast<off64_t>(writeback_from_), static_cast<off64_t>(written_ - writeback_from_),
                        SYNC_FILE_RANGE_WRITE);
      writeback_from_ = written_;
    }
#endif
    {
      std::lock_guard<std::mutex> lock(mu_);
      queued_bytes_ -= chunk.size();
    }
    cv_.notify_all();
  }
}

void StateStore::UpdateWriter::finish_writes() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    closing_ = true;
  }
  cv_.notify_all();
  thread_.join();
  if (!error_.empty()) throw std::runtime_error(error_);
}

void StateStore::UpdateWriter::read_at(uint64_t offset, size_t n, char* out) {
  if (fd_ < 0) throw std::logic_error("StateStore::UpdateWriter: read_at after commit");
  finish_writes();
  if (offset > appended_ || n > appended_ - offset)
    throw std::out_of_range("StateStore::UpdateWriter: read of " + std::to_string(n) + " bytes at " +
                            std::to_string(offset) + " beyond the " + std::to_string(appended_) + " appended");
  pread_exact(fd_, offset, n, out, tmp_path_);
}

void StateStore::UpdateWriter::read_back(std::string& out) {
  if (fd_ < 0) throw std::logic_error("StateStore::UpdateWriter: read_back after commit");
  finish_writes();
  pread_all(fd_, appended_, out, tmp_path_);
}

bool StateStore::UpdateWriter::commit(const StoredUpdate& u) {
  if (fd_ < 0) throw std::logic_error("StateStore::UpdateWriter: committed twice");
  if (u.round != round_ || u.client_index != client_ || u.phase != phase_)
    throw std::invalid_argument("StateStore::UpdateWriter: metadata for round " + std::to_string(u.round) + " " +
                                u.phase + ", client " + std::to_string(u.client_index) +
                                " committed to the writer of round " + std::to_string(round_) + " " + phase_ +
                                ", client " + std::to_string(client_));
  finish_writes();
  if (::fdatasync(fd_) != 0) io_fail("fsync payload file", tmp_path_);
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) io_fail("close payload file", tmp_path_);
  auto& impl = *store_.impl_;
  const std::string meta_key = update_key(run_id_, round_, phase_, client_, kUpdateMeta);
  std::lock_guard<std::mutex> lock(impl.update_lock(meta_key));
  if (impl.exists(kUpdates, meta_key)) return false;  // the destructor removes our file
  if (::rename(tmp_path_.c_str(), final_path_.c_str()) != 0) io_fail("rename payload file to", final_path_);
  committed_ = true;
  sync_directory(impl.payload_dir);  // the rename is durable before the metadata points at the file
  impl.put(kUpdates, meta_key, encode_update_meta(u, appended_));
  return true;
}

std::unique_ptr<StateStore::UpdateWriter> StateStore::begin_update(const std::string& run_id, int round,
                                                                    int client_index, const std::string& phase) {
  if (has_update(run_id, round, client_index, phase)) return nullptr;
  return std::unique_ptr<UpdateWriter>(new UpdateWriter(*this, run_id, round, phase, client_index));
}

bool StateStore::put_update(const std::string& run_id, const StoredUpdate& u) {
  auto w = begin_update(run_id, u.round, u.client_index, u.phase);
  if (!w) return false;
  w->append(u.payload.data(), u.payload.size());
  return w->commit(u);
}

bool StateStore::has_update(const std::string& run_id, int round, int client_index, const std::string& phase) const {
  return impl_->exists(kUpdates, update_key(run_id, round, phase, client_index, kUpdateMeta));
}

std::vector<int> StateStore::update_clients(const std::string& run_id, int round, const std::string& phase) const {
  std::vector<int> out;
  const std::string prefix = phase_key(run_id, round, phase);
  std::unique_ptr<rocksdb::Iterator> it(impl_->db->NewIterator(rocksdb::ReadOptions(), impl_->h(kUpdates)));
  // Jump from one client to the next, so that payload values are never read.
  for (it->Seek(prefix); it->Valid() && starts_with(it->key(), prefix);) {
    const auto k = it->key();
    if (k.size() != prefix.size() + 5) impl_->corrupt(kUpdates, k.ToString(), "unexpected key length");
    const int client = static_cast<int>(get_be(k.data() + prefix.size(), 4));
    out.push_back(client);
    std::string next = prefix;
    put_be(next, static_cast<uint64_t>(client) + 1, 4);
    if (client == std::numeric_limits<int>::max()) break;
    it->Seek(next);
  }
  impl_->check(it->status(), "scan updates");
  return out;
}

std::optional<StoredUpdate> StateStore::update(const std::string& run_id, int round, int client_index,
                                               const std::string& phase, std::string* payload) const {
  const std::string key = update_key(run_id, round, phase, client_index, kUpdateMeta);
  const auto v = impl_->get(kUpdates, key);
  if (!v) return std::nullopt;
  return impl_->stored_update(key, *v, run_id, round, phase, client_index, payload);
}

StateStore::PayloadFile::~PayloadFile() { ::close(fd_); }

void StateStore::PayloadFile::read(uint64_t offset, size_t n, char* out) const {
  if (offset > size_ || n > size_ - offset)
    throw std::runtime_error("StateStore: read of " + std::to_string(n) + " bytes at " + std::to_string(offset) +
                             " is beyond payload file '" + path_ + "' (" + std::to_string(size_) + " bytes)");
  pread_exact(fd_, offset, n, out, path_);
}

std::unique_ptr<StateStore::PayloadFile> StateStore::open_update_payload(const std::string& run_id, int round,
                                                                         int client_index, const std::string& phase) const {
  const std::string key = update_key(run_id, round, phase, client_index, kUpdateMeta);
  const auto v = impl_->get(kUpdates, key);
  if (!v) return nullptr;
  uint64_t payload_bytes = 0;
  impl_->decode(kUpdates, key, [&] { return decode_update_meta(*v, &payload_bytes); });
  const std::string path = impl_->payload_dir + "/" + payload_file_name(run_id, round, phase, client_index);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) io_fail("open file", path);
  struct stat st;
  if (::fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) != payload_bytes) {
    ::close(fd);
    impl_->corrupt(kUpdates, key, "payload file '" + path + "' is not the recorded " + std::to_string(payload_bytes) +
                                      " bytes");
  }
  return std::unique_ptr<PayloadFile>(new PayloadFile(fd, payload_bytes, path));
}

std::vector<StoredUpdate> StateStore::updates(const std::string& run_id, int round, const std::string& phase) const {
  std::vector<StoredUpdate> out;
  const std::string prefix = phase_key(run_id, round, phase);
  impl_->scan(kUpdates, prefix, [&](const rocksdb::Slice& k, const rocksdb::Slice& v) {
    const std::string key = k.ToString();
    if (key.size() != prefix.size() + 5) impl_->corrupt(kUpdates, key, "unexpected key length");
    if (key.back() != kUpdateMeta) impl_->corrupt(kUpdates, key, "unknown key tag");
    const int client = static_cast<int>(get_be(key.data() + prefix.size(), 4));
    std::string payload;
    StoredUpdate u = impl_->stored_update(key, v.ToString(), run_id, round, phase, client, &payload);
    u.payload = std::move(payload);
    out.push_back(std::move(u));
  });
  return out;
}

void StateStore::prune_updates(const std::string& run_id, int keep_last_rounds) {
  check_non_negative(keep_last_rounds, "keep_last_rounds");
  const auto last = latest_model_version(run_id);
  if (!last) return;
  const int64_t cut = static_cast<int64_t>(*last) - keep_last_rounds;  // delete rounds <= cut
  if (cut < 0) return;
  const std::string prefix = run_prefix(run_id);
  std::string end = prefix;
  put_be(end, static_cast<uint64_t>(cut) + 1, 8);
  rocksdb::WriteBatch b;
  std::vector<std::string> files;
  std::unique_ptr<rocksdb::Iterator> it(impl_->db->NewIterator(rocksdb::ReadOptions(), impl_->h(kUpdates)));
  for (it->Seek(prefix); it->Valid() && starts_with(it->key(), prefix) && it->key().compare(end) < 0; it->Next()) {
    const auto k = it->key();
    impl_->check(b.Delete(impl_->h(kUpdates), k), "batch");
    // run \0 BE64(round) phase \0 BE32(client) tag
    const std::string key = k.ToString();
    const size_t nul = key.find('\0', prefix.size() + 8);
    if (nul != std::string::npos && key.size() == nul + 6) {
      const int round = static_cast<int>(get_be(key.data() + prefix.size(), 8));
      const std::string phase = key.substr(prefix.size() + 8, nul - prefix.size() - 8);
      const int client = static_cast<int>(get_be(key.data() + nul + 1, 4));
      if (valid_phase_name(phase)) files.push_back(impl_->payload_dir + "/" + payload_file_name(run_id, round, phase, client));
    }
  }
  impl_->check(it->status(), "scan updates");
  if (b.Count() == 0) return;
  impl_->write(b, "prune updates of run '" + run_id + "'");
  for (const auto& f : files) ::unlink(f.c_str());  // after the metadata is gone: never a dangling record
}

// ---- end of a round

void StateStore::commit_round(const RunRecord& run, int round, const ModelState& global,
                              const std::string& strategy_state, const RoundRecord& rec) {
  check_run_id(run.run_id);
  if (round < 1) throw std::invalid_argument("StateStore::commit_round: round must be >= 1, got " + std::to_string(round));
  if (rec.round != round)
    throw std::invalid_argument("StateStore::commit_round: round record is for round " + std::to_string(rec.round) +
                                ", committing round " + std::to_string(round));
  RunRecord advanced = run;
  advanced.current_round = round + 1;
  const std::string model = write_model_file(run.run_id, round, global);
  rocksdb::WriteBatch b;
  impl_->check(b.Put(impl_->h(kModels), round_key(run.run_id, round), model), "batch");
  impl_->check(b.Put(impl_->h(kStrategy), run.run_id, strategy_state), "batch");
  impl_->check(b.Put(impl_->h(kRounds), round_key(run.run_id, round), rec.json), "batch");
  impl_->check(b.Put(impl_->h(kRuns), run.run_id, encode_run(advanced)), "batch");
  impl_->write(b, "commit round " + std::to_string(round) + " of run '" + run.run_id + "'");
}

// ---- models

// The model goes to its own file (written chunk by chunk from the tensors, fsynced, renamed into
// place, directory fsynced) and the record that names it into the batch: a 147 MB model through
// RocksDB was written twice (WAL, then blob file), checksummed in software and held in a
// memtable, 0.65 s of every round's commit (docs/performance.md).
std::string StateStore::write_model_file(const std::string& run_id, int version, const ModelState& global) {
  const std::string name = model_file_name(run_id, version);
  const std::string path = impl_->model_dir + "/" + name;
  write_safetensors(path, global, {{"run_id", run_id}, {"version", std::to_string(version)}});
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) throw std::runtime_error("StateStore: cannot stat model file '" + path + "': " + ec.message());
  std::string record = kModelFileTag;
  put_be(record, static_cast<uint64_t>(size), 8);
  return record + name;
}

void StateStore::save_initial_model(const std::string& run_id, const ModelState& global) {
  check_run_id(run_id);
  impl_->put(kModels, round_key(run_id, 0), write_model_file(run_id, 0, global));
}

std::optional<ModelState> StateStore::load_model(const std::string& run_id, int version) const {
  const auto bytes = model_bytes(run_id, version);
  if (!bytes) return std::nullopt;
  const std::string key = round_key(run_id, version);
  return impl_->decode(kModels, key, [&] {
    return from_safetensors_bytes(*bytes, nullptr, "column family 'models' key '" + describe_key(kModels, key) + "'");
  });
}

std::optional<std::string> StateStore::model_bytes(const std::string& run_id, int version) const {
  check_run_id(run_id);
  const std::string key = round_key(run_id, version);
  auto v = impl_->get(kModels, key);
  const std::string file = v ? model_record_file(*v) : "";
  if (file.empty()) return v;  // none, or an older store's inline bytes
  const uint64_t size = get_be(v->data() + 4, 8);
  const std::string path = impl_->model_dir + "/" + file;
  std::string bytes;
  try {
    bytes = read_file(path);
  } catch (const std::runtime_error& e) {
    impl_->corrupt(kModels, key, std::string("its model file is unreadable: ") + e.what());
  }
  if (bytes.size() != size)
    impl_->corrupt(kModels, key, "its model file '" + path + "' has " + std::to_string(bytes.size()) + " bytes, the record says " +
                                     std::to_string(size));
  return bytes;
}

std::optional<int> StateStore::latest_model_version(const std::string& run_id) const {
  const std::string prefix = run_prefix(run_id);
  auto last = impl_->last_key(kModels, prefix, 8);
  if (!last) return std::nullopt;
  return static_cast<int>(get_be(last->data() + prefix.size(), 8));
}

// ---- strategy state and round reports

std::string StateStore::load_strategy_state(const std::string& run_id) const {
  check_run_id(run_id);
  return impl_->get(kStrategy, run_id).value_or(std::string());
}

std::vector<RoundRecord> StateStore::rounds(const std::string& run_id) const {
  std::vector<RoundRecord> out;
  const std::string prefix = run_prefix(run_id);
  impl_->scan(kRounds, prefix, [&](const rocksdb::Slice& k, const rocksdb::Slice& v) {
    if (k.size() != prefix.size() + 8) impl_->corrupt(kRounds, k.ToString(), "unexpected key length");
    RoundRecord r;
    r.round = static_cast<int>(get_be(k.data() + prefix.size(), 8));
    r.json = v.ToString();
    out.push_back(std::move(r));
  });
  return out;
}

// ---- audit

void StateStore::append_audit(const std::string& json_line) {
  std::lock_guard<std::mutex> lock(impl_->audit_mu);
  std::string key;
  put_be(key, impl_->next_audit, 8);
  impl_->put(kAudit, key, json_line);
  ++impl_->next_audit;
}

std::vector<std::string> StateStore::audit() const {
  std::vector<std::string> out;
  impl_->scan(kAudit, "", [&](const rocksdb::Slice&, const rocksdb::Slice& v) { out.push_back(v.ToString()); });
  return out;
}

// ---- clients revoked by an admin

void StateStore::deny_client(const std::string& name, const std::string& json) {
  if (name.empty()) throw std::invalid_argument("StateStore::deny_client: empty client name");
  impl_->put(kDenied, name, json);
}

std::optional<std::string> StateStore::denied(const std::string& name) const {
  if (name.empty()) return std::nullopt;
  return impl_->get(kDenied, name);
}

}  // namespace fl
