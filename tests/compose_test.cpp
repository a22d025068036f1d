// Static checks of docker-compose.yml, deploy/*.yaml and the Dockerfile (no Docker needed):
// the services and their volumes are wired as documented, every command runs one of the
// project's programs, every host file they reference exists in the repository, and every
// config file parses with keys the programs accept.
#include <gtest/gtest.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

const fs::path kRepo = FL_SOURCE_DIR;
const std::set<std::string> kPrograms = {"fedsim", "fedcoord", "fedclient", "fedctl"};
const std::string kPkiScript = "scripts/pki.sh";
const std::vector<std::string> kHospitals = {"hospital-1", "hospital-2", "hospital-3"};

// The YAML keys the deploy files may use: long flags of fedcoord / fedclient.
const std::set<std::string> kCoordinatorKeys = {
    "listen", "tls-ca", "tls-cert", "tls-key", "tls-crl", "data-dir", "run-id", "strategy", "model", "rounds",
    "min-clients", "client-names", "fraction", "round-deadline-s", "local-epochs", "batch-size", "lr", "momentum",
    "metrics-listen"};
const std::set<std::string> kClientKeys = {"coordinator", "tls-ca", "tls-cert", "tls-key", "data-dir",
                                           "partition-file", "client-index", "state-dir", "device", "threads",
                                           "metrics-listen"};

struct Mount {
  std::string source, target;
  bool bind = false;  // a host path (else a named volume)
  bool read_only = false;
};

bool is_host_path(const std::string& s) { return !s.empty() && (s[0] == '.' || s[0] == '/' || s[0] == '~'); }

std::vector<Mount> mounts_of(const YAML::Node& service) {
  std::vector<Mount> out;
  const YAML::Node vols = service["volumes"];
  if (!vols) return out;
  for (const auto& v : vols) {
    Mount m;
    if (v.IsScalar()) {  // SOURCE:TARGET[:MODE] (or a bare TARGET: anonymous volume)
      std::vector<std::string> parts;
      std::stringstream ss(v.as<std::string>());
      for (std::string p; std::getline(ss, p, ':');) parts.push_back(p);
      if (parts.size() == 1) {
        m.target = parts[0];
      } else {
        m.source = parts[0];
        m.target = parts[1];
        if (parts.size() > 2) {
          std::stringstream modes(parts[2]);
          for (std::string mode; std::getline(modes, mode, ',');) m.read_only |= mode == "ro";
        }
      }
      m.bind = is_host_path(m.source);
    } else {  // long syntax
      m.source = v["source"] ? v["source"].as<std::string>() : "";
      m.target = v["target"].as<std::string>();
      m.bind = v["type"] ? v["type"].as<std::string>() == "bind" : is_host_path(m.source);
      m.read_only = v["read_only"] && v["read_only"].as<bool>();
    }
    out.push_back(m);
  }
  return out;
}

std::optional<Mount> mount_at(const YAML::Node& service, const std::string& target) {
  for (const auto& m : mounts_of(service))
    if (m.target == target) return m;
  return std::nullopt;
}

// The mount that holds a container path (the longest target that is a prefix of it).
std::optional<Mount> mount_holding(const YAML::Node& service, const std::string& path) {
  std::optional<Mount> best;
  for (const auto& m : mounts_of(service)) {
    const bool holds = path == m.target || (path.rfind(m.target + "/", 0) == 0);
    if (holds && (!best || m.target.size() > best->target.size())) best = m;
  }
  return best;
}

std::vector<std::string> argv_of(const YAML::Node& node) {
  std::vector<std::string> out;
  if (!node) return out;
  if (node.IsSequence()) {
    for (const auto& a : node) out.push_back(a.as<std::string>());
  } else {
    std::stringstream ss(node.as<std::string>());
    for (std::string w; ss >> w;) out.push_back(w);
  }
  return out;
}

std::optional<std::string> flag_value(const std::vector<std::string>& argv, const std::string& flag) {
  for (std::size_t i = 0; i + 1 < argv.size(); ++i)
    if (argv[i] == flag) return argv[i + 1];
  for (const auto& a : argv)
    if (a.rfind(flag + "=", 0) == 0) return a.substr(flag.size() + 1);
  return std::nullopt;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

int port_of(const std::string& host_port) {
  const auto colon = host_port.rfind(':');
  return colon == std::string::npos ? -1 : std::stoi(host_port.substr(colon + 1));
}

class ComposeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(kRepo / "docker-compose.yml"));
    ASSERT_NO_THROW(doc_ = YAML::LoadFile((kRepo / "docker-compose.yml").string()));
    ASSERT_TRUE(doc_["services"] && doc_["services"].IsMap());
    services_ = doc_["services"];
  }

  YAML::Node service(const std::string& name) const { return services_[name]; }

  bool declared_volume(const std::string& name) const {
    const YAML::Node vols = doc_["volumes"];
    return vols && vols.IsMap() && vols[name].IsDefined();
  }

  // The host file behind a container path, through the service's bind mounts.
  std::optional<fs::path> host_file(const YAML::Node& svc, const std::string& container_path) const {
    auto m = mount_holding(svc, container_path);
    if (!m || !m->bind) return std::nullopt;
    return kRepo / (m->source + container_path.substr(m->target.size()));
  }

  // Loads the --config file of a service, checked to exist and to be a YAML map.
  YAML::Node config_of(const std::string& name) const {
    const auto svc = service(name);
    const auto argv = argv_of(svc["command"]);
    const auto config = flag_value(argv, "--config");
    EXPECT_TRUE(config) << name << " has no --config";
    if (!config) return {};
    const auto file = host_file(svc, *config);
    EXPECT_TRUE(file) << name << ": " << *config << " is not bind-mounted from the repository";
    if (!file) return {};
    EXPECT_TRUE(fs::is_regular_file(*file)) << *file;
    YAML::Node cfg;
    EXPECT_NO_THROW(cfg = YAML::LoadFile(file->string())) << *file;
    EXPECT_TRUE(cfg.IsMap()) << *file;
    return cfg;
  }

  YAML::Node doc_, services_;
};

TEST_F(ComposeTest, ServicesExist) {
  for (const std::string name : {"pki-init", "coordinator", "hospital-1", "hospital-2", "hospital-3"})
    EXPECT_TRUE(service(name).IsDefined() && service(name).IsMap()) << "missing service " << name;
}

TEST_F(ComposeTest, CoordinatorPublishesPortAndPersistsState) {
  const auto coord = service("coordinator");
  bool published = false;
  for (const auto& p : coord["ports"]) {
    if (p.IsMap()) {
      published |= p["target"].as<int>() == 50051 && p["published"];
    } else {
      std::string s = p.as<std::string>();
      s = s.substr(0, s.find('/'));  // drop /tcp
      const auto colon = s.rfind(':');
      published |= colon != std::string::npos && s.substr(colon + 1) == "50051";
    }
  }
  EXPECT_TRUE(published) << "coordinator does not publish container port 50051";

  const auto data = mount_at(coord, "/var/lib/fedcoord");
  ASSERT_TRUE(data) << "no volume at /var/lib/fedcoord";
  EXPECT_FALSE(data->bind);
  EXPECT_FALSE(data->read_only);
  EXPECT_TRUE(declared_volume(data->source)) << data->source << " not in top-level volumes";
}

TEST_F(ComposeTest, HospitalsHaveDistinctDataVolumes) {
  std::set<std::string> seen;
  const auto coord_data = mount_at(service("coordinator"), "/var/lib/fedcoord");
  for (const auto& h : kHospitals) {
    const auto data = mount_at(service(h), "/data");
    ASSERT_TRUE(data) << h << " has no /data volume";
    EXPECT_FALSE(data->bind) << h;
    EXPECT_FALSE(data->read_only) << h;
    EXPECT_TRUE(declared_volume(data->source)) << data->source << " not in top-level volumes";
    EXPECT_TRUE(seen.insert(data->source).second) << h << " shares " << data->source;
    if (coord_data) {
      EXPECT_NE(data->source, coord_data->source);
    }
  }
}

TEST_F(ComposeTest, CommandsRunOnlyProjectPrograms) {
  for (const auto& kv : services_) {
    const std::string name = kv.first.as<std::string>();
    const YAML::Node svc = kv.second;
    const auto entry = argv_of(svc["entrypoint"]);
    EXPECT_TRUE(entry.empty()) << name << ": an entrypoint would hide the checked command";
    const auto argv = argv_of(svc["command"]);
    ASSERT_FALSE(argv.empty()) << name << " has no command";
    const std::string& prog = argv.front();
    if (kPrograms.count(prog)) continue;
    if (name == "prometheus" && prog == "prometheus") continue;  // Debian's, scraping ours
    const bool is_pki = prog == kPkiScript || prog == "./" + kPkiScript ||
                        (prog.size() > kPkiScript.size() &&
                         prog.compare(prog.size() - kPkiScript.size() - 1, std::string::npos, "/" + kPkiScript) == 0);
    EXPECT_TRUE(is_pki) << name << " runs '" << prog << "'";
  }
  EXPECT_EQ(::access((kRepo / kPkiScript).c_str(), X_OK), 0) << "scripts/pki.sh missing or not executable";
}

TEST_F(ComposeTest, HostFilesExist) {
  EXPECT_TRUE(fs::is_regular_file(kRepo / "Dockerfile"));
  for (const auto& kv : services_) {
    const std::string name = kv.first.as<std::string>();
    const YAML::Node svc = kv.second;
    if (const YAML::Node b = svc["build"]) {
      const std::string context = b.IsScalar() ? b.as<std::string>() : b["context"].as<std::string>(".");
      const std::string dockerfile = b.IsMap() ? b["dockerfile"].as<std::string>("Dockerfile") : "Dockerfile";
      EXPECT_TRUE(fs::is_directory(kRepo / context)) << name << ": build context " << context;
      EXPECT_TRUE(fs::is_regular_file(kRepo / context / dockerfile)) << name << ": " << dockerfile;
    } else {
      EXPECT_TRUE(svc["image"]) << name << " has neither build nor image";
    }
    for (const auto& m : mounts_of(svc)) {
      if (!m.bind) {
        EXPECT_FALSE(m.source.empty()) << name << ": anonymous volume at " << m.target;
        if (!m.source.empty()) {
          EXPECT_TRUE(declared_volume(m.source)) << name << ": volume " << m.source;
        }
        continue;
      }
      EXPECT_EQ(m.source.rfind("./", 0), 0u) << name << ": host path " << m.source << " is not in the repository";
      EXPECT_TRUE(fs::exists(kRepo / m.source)) << name << ": " << m.source << " does not exist";
      EXPECT_TRUE(m.read_only) << name << ": " << m.source << " should be mounted read-only";
    }
    for (const auto& env : argv_of(svc["env_file"]))
      EXPECT_TRUE(fs::is_regular_file(kRepo / env)) << name << ": env_file " << env;
  }
  for (const char* section : {"configs", "secrets"}) {
    const YAML::Node top = doc_[section];
    if (!top) continue;
    for (const auto& kv : top) {
      if (kv.second["file"]) {
        EXPECT_TRUE(fs::is_regular_file(kRepo / kv.second["file"].as<std::string>()))
            << section << "." << kv.first.as<std::string>();
      }
    }
  }
}

// The CA key and every key stay in pki-init's volume: each service mounts its own volume at
// /pki (read-only) holding what pki-init exports for it, and runs as the image's non-root user.
TEST_F(ComposeTest, EachServiceGetsOnlyItsOwnKeyAndRunsAsNonRoot) {
  const auto pki_init = service("pki-init");
  const auto argv = argv_of(pki_init["command"]);
  ASSERT_GE(argv.size(), 2u);
  const auto pki = mount_at(pki_init, argv[1]);
  ASSERT_TRUE(pki) << "pki-init does not write its DIR (" << argv[1] << ") to a volume";
  EXPECT_FALSE(pki->bind);
  EXPECT_FALSE(pki->read_only);
  EXPECT_TRUE(declared_volume(pki->source));
  EXPECT_NE(pki_init["restart"].as<std::string>("no"), "always");
  const auto export_root = flag_value(argv, "--export-to");
  ASSERT_TRUE(export_root) << "pki-init exports nothing";
  EXPECT_EQ(flag_value(argv, "--owner").value_or(""), "10001");
  EXPECT_EQ(pki_init["user"].as<std::string>(""), "0:0");

  std::set<std::string> seen;
  for (const std::string name : {"coordinator", "hospital-1", "hospital-2", "hospital-3"}) {
    const auto svc = service(name);
    const auto m = mount_at(svc, "/pki");
    ASSERT_TRUE(m) << name << " does not mount its keys at /pki";
    EXPECT_TRUE(m->read_only) << name << " must mount its keys read-only";
    EXPECT_NE(m->source, pki->source) << name << " sees the whole PKI, CA key included";
    EXPECT_TRUE(seen.insert(m->source).second) << name << " shares " << m->source;
    const auto exported = mount_at(pki_init, *export_root + "/" + name);
    ASSERT_TRUE(exported) << "pki-init does not export " << name << "'s keys";
    EXPECT_EQ(exported->source, m->source) << name;
    EXPECT_FALSE(svc["user"].IsDefined()) << name << " overrides the image's non-root user";
    EXPECT_EQ(svc["depends_on"]["pki-init"]["condition"].as<std::string>(""), "service_completed_successfully")
        << name;
  }
  for (const auto& kv : services_) {
    if (kv.first.as<std::string>() == "pki-init") continue;
    for (const auto& m : mounts_of(kv.second))
      EXPECT_NE(m.source, pki->source) << kv.first.as<std::string>() << " mounts the whole PKI";
  }
  for (const auto& h : kHospitals) EXPECT_TRUE(service(h)["depends_on"]["coordinator"].IsDefined()) << h;

  // The runtime image's last USER is the non-root uid the keys are exported to.
  std::stringstream lines(slurp(kRepo / "Dockerfile"));
  std::string user;
  for (std::string line; std::getline(lines, line);)
    if (line.rfind("USER ", 0) == 0) user = line.substr(5);
  EXPECT_EQ(user, "10001:10001");
}

TEST_F(ComposeTest, DeployConfigsParseWithKnownKeys) {
  // Every file in deploy/ parses and uses only known keys...
  ASSERT_TRUE(fs::is_directory(kRepo / "deploy"));
  int files = 0;
  for (const auto& e : fs::directory_iterator(kRepo / "deploy")) {
    if (e.path().extension() != ".yaml" && e.path().extension() != ".yml") continue;
    ++files;
    YAML::Node cfg;
    ASSERT_NO_THROW(cfg = YAML::LoadFile(e.path().string())) << e.path();
    ASSERT_TRUE(cfg.IsMap()) << e.path();
    const bool coordinator = e.path().stem() == "coordinator";
    const auto& allowed = coordinator ? kCoordinatorKeys : kClientKeys;
    for (const auto& kv : cfg) {
      const std::string key = kv.first.as<std::string>();
      EXPECT_TRUE(allowed.count(key)) << e.path() << ": unknown key '" << key << "'";
      EXPECT_TRUE(kv.second.IsScalar() || key == "client-names") << e.path() << ": " << key;
    }
  }
  EXPECT_GE(files, 4);

  // ...and each program's --config is one of them, with paths that fit its container.
  const auto coord_svc = service("coordinator");
  ASSERT_EQ(argv_of(coord_svc["command"]).front(), "fedcoord");
  const YAML::Node coord = config_of("coordinator");
  ASSERT_TRUE(coord.IsMap());
  for (const auto& kv : coord) EXPECT_TRUE(kCoordinatorKeys.count(kv.first.as<std::string>()));
  EXPECT_EQ(port_of(coord["listen"].as<std::string>()), 50051);
  EXPECT_EQ(coord["data-dir"].as<std::string>(), "/var/lib/fedcoord");
  // The run names its hospitals, in order: client i is hospital-(i+1) whatever order they start in.
  EXPECT_EQ(coord["client-names"].as<std::vector<std::string>>(std::vector<std::string>{}), kHospitals);
  for (const char* k : {"tls-ca", "tls-cert", "tls-key", "tls-crl"}) {
    const auto m = mount_holding(coord_svc, coord[k].as<std::string>());
    EXPECT_TRUE(m && m->target == "/pki") << "coordinator " << k;
  }
  EXPECT_EQ(coord["tls-cert"].as<std::string>(), "/pki/coordinator.crt");
  EXPECT_GE(coord["min-clients"].as<int>(), 1);
  EXPECT_LE(coord["min-clients"].as<int>(), static_cast<int>(kHospitals.size()));

  // The names in the coordinator's certificate (pki.sh: localhost, 127.0.0.1, --coordinator-host).
  const auto pki_argv = argv_of(service("pki-init")["command"]);
  std::set<std::string> cert_names = {"localhost", "127.0.0.1"};
  for (std::size_t i = 0; i + 1 < pki_argv.size(); ++i)
    if (pki_argv[i] == "--coordinator-host") cert_names.insert(pki_argv[i + 1]);

  std::set<int> indices;
  for (std::size_t i = 0; i < kHospitals.size(); ++i) {
    const auto& h = kHospitals[i];
    const auto svc = service(h);
    ASSERT_EQ(argv_of(svc["command"]).front(), "fedclient") << h;
    const YAML::Node cfg = config_of(h);
    ASSERT_TRUE(cfg.IsMap()) << h;
    for (const auto& kv : cfg) EXPECT_TRUE(kClientKeys.count(kv.first.as<std::string>())) << h;
    const std::string addr = cfg["coordinator"].as<std::string>();
    const std::string host = addr.substr(0, addr.rfind(':'));
    EXPECT_TRUE(service(host).IsDefined()) << h << " dials " << addr << ", not a service";
    EXPECT_TRUE(cert_names.count(host)) << h << " dials " << host << ", a name not in the coordinator's certificate";
    EXPECT_EQ(port_of(addr), 50051) << h;
    EXPECT_EQ(cfg["tls-cert"].as<std::string>(), "/pki/" + h + ".crt");
    EXPECT_EQ(cfg["tls-key"].as<std::string>(), "/pki/" + h + ".key");
    for (const char* k : {"partition-file", "state-dir"}) {
      const auto m = mount_holding(svc, cfg[k].as<std::string>());
      EXPECT_TRUE(m && m->target == "/data" && !m->bind) << h << " " << k << " is not on its data volume";
    }
    EXPECT_EQ(cfg["client-index"].as<int>(), static_cast<int>(i)) << h;
    EXPECT_TRUE(indices.insert(cfg["client-index"].as<int>()).second);
  }
}

// Prometheus scrapes exactly the ports the programs serve their metrics on, by service name.
TEST_F(ComposeTest, PrometheusScrapesEveryProgramsMetricsPort) {
  const auto prom = service("prometheus");
  ASSERT_TRUE(prom.IsDefined());
  const auto argv = argv_of(prom["command"]);
  std::string config_file;
  for (const auto& a : argv)
    if (a.rfind("--config.file=", 0) == 0) config_file = a.substr(14);
  ASSERT_FALSE(config_file.empty());
  const auto m = mount_at(prom, config_file);
  ASSERT_TRUE(m && m->bind && m->read_only) << "prometheus does not mount its config read-only";
  const YAML::Node cfg = YAML::LoadFile((kRepo / m->source).string());
  std::set<std::string> targets;
  for (const auto& job : cfg["scrape_configs"])
    for (const auto& sc : job["static_configs"])
      for (const auto& t : sc["targets"]) targets.insert(t.as<std::string>());
  std::set<std::string> expected = {"coordinator:" + std::to_string(port_of(config_of("coordinator")["metrics-listen"].as<std::string>()))};
  for (const auto& h : kHospitals)
    expected.insert(h + ":" + std::to_string(port_of(config_of(h)["metrics-listen"].as<std::string>())));
  EXPECT_EQ(targets, expected);
  for (const auto& t : targets) EXPECT_TRUE(service(t.substr(0, t.find(':'))).IsDefined()) << t;
}

TEST_F(ComposeTest, DockerfileCopiesExistingSources) {
  const std::string dockerfile = slurp(kRepo / "Dockerfile");
  ASSERT_FALSE(dockerfile.empty());
  // Join continuation lines, then check every COPY/ADD from the build context.
  const std::string joined = std::regex_replace(dockerfile, std::regex("\\\\\\n"), " ");
  std::stringstream lines(joined);
  std::set<std::string> copied;
  std::string runtime_copies;
  for (std::string line; std::getline(lines, line);) {
    std::stringstream words(line);
    std::string instr;
    words >> instr;
    if (instr != "COPY" && instr != "ADD") continue;
    std::vector<std::string> args;
    bool from_stage = false;
    for (std::string w; words >> w;) {
      if (w.rfind("--from", 0) == 0) from_stage = true;
      if (w.rfind("--", 0) == 0) continue;
      args.push_back(w);
    }
    ASSERT_GE(args.size(), 2u) << line;
    if (from_stage) {
      runtime_copies += line + "\n";
      continue;
    }
    for (std::size_t i = 0; i + 1 < args.size(); ++i) {
      EXPECT_TRUE(fs::exists(kRepo / args[i])) << "Dockerfile copies missing " << args[i];
      std::string s = args[i];
      while (!s.empty() && s.back() == '/') s.pop_back();
      copied.insert(s);
    }
  }
  // Every project folder that the top-level CMakeLists.txt builds (tests are off in the image).
  const std::string cmake = slurp(kRepo / "CMakeLists.txt");
  const std::regex subdir(R"(add_subdirectory\(\s*([A-Za-z0-9_./-]+)\s*\))");
  for (auto it = std::sregex_iterator(cmake.begin(), cmake.end(), subdir); it != std::sregex_iterator(); ++it) {
    const std::string dir = (*it)[1];
    if (dir == "tests" || dir.rfind("tests/", 0) == 0) continue;  // tests and fuzz targets are off in the image
    EXPECT_TRUE(copied.count(dir) || copied.count(".")) << "Dockerfile does not copy " << dir << "/";
  }
  EXPECT_TRUE(copied.count("scripts") || copied.count(".")) << "the image needs scripts/ (pki.sh)";
  for (const auto& p : kPrograms) EXPECT_NE(runtime_copies.find(p), std::string::npos) << p << " not in the image";
}

}  // namespace
