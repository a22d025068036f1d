// fedctl pki init|issue|revoke|list: the local development PKI (common/net/pki.h).
#include <iostream>
#include <memory>
#include <stdexcept>

#include "common/net/pki.h"
#include "coordinator/fedctl/cli.h"

namespace fl::fedctl {
namespace {

// Runs a PKI call, mapping the library's errors to the exit-code contract: a bad value the
// parser could not judge (name pattern, host, reserved name) is a usage error, the rest
// (no CA, files, duplicates) an error.
template <typename F>
int run_pki(F&& f) {
  try {
    return f();
  } catch (const std::invalid_argument& e) {
    throw CommandError(kUsage, e.what());
  } catch (const CommandError&) {
    throw;
  } catch (const std::exception& e) {
    throw CommandError(kError, e.what());
  }
}

nlohmann::ordered_json to_json(const pki::CertInfo& c) {
  nlohmann::ordered_json j;
  j["name"] = c.name;
  j["role"] = c.role;
  j["serial"] = c.serial;
  j["not_after"] = c.not_after;
  j["revoked"] = c.revoked;
  j["revoked_at"] = c.revoked_at.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(c.revoked_at);
  j["cert"] = c.cert_path;
  j["key"] = c.key_path;
  return j;
}

CLI::Option* add_dir(CLI::App* sub, std::string& dir) {
  return sub->add_option("--dir", dir, "PKI directory")->default_val("pki")->check([](const std::string& s) {
    return s.empty() ? std::string("--dir must not be empty") : std::string();
  });
}

}  // namespace

void add_pki_commands(CLI::App& app, Context& ctx) {
  auto* pki_cmd = app.add_subcommand("pki", "manage the local development PKI (CA, certificates, CRL)");
  pki_cmd->require_subcommand(1);

  // Option storage lives as long as the parse (the App outlives the callbacks).
  struct Opts {
    std::string dir, ca_name = "federated-dev-ca", role, name;
    std::vector<std::string> hosts;
    int days = 825;
  };
  auto o = std::make_shared<Opts>();

  {
    auto* sub = pki_cmd->add_subcommand(
        "init", "create a CA in --dir: ca.key (0600), ca.crt, an empty crl.pem and index.json; refuses an existing CA");
    add_dir(sub, o->dir);
    sub->add_option("--ca-name", o->ca_name, "common name of the CA certificate")->default_val("federated-dev-ca");
    on_run(sub, ctx, [&ctx, o] {
      return run_pki([&] {
        pki::init_ca(o->dir, o->ca_name);
        if (ctx.json) {
          nlohmann::ordered_json j;
          j["dir"] = o->dir;
          j["ca_name"] = o->ca_name;
          j["ca_cert"] = pki::ca_cert_path(o->dir);
          j["ca_key"] = pki::ca_key_path(o->dir);
          j["crl"] = pki::crl_path(o->dir);
          j["index"] = pki::index_path(o->dir);
          print_json(std::cout, j);
        } else {
          std::cout << "created CA '" << o->ca_name << "': wrote " << pki::ca_key_path(o->dir) << ", "
                    << pki::ca_cert_path(o->dir) << ", " << pki::crl_path(o->dir) << ", " << pki::index_path(o->dir)
                    << "\n";
        }
        return int(kOk);
      });
    });
  }
  {
    auto* sub = pki_cmd->add_subcommand(
        "issue",
        "issue DIR/<name>.key + DIR/<name>.crt signed by the CA (CN=<name>, OU=<role>, SAN URI fl-role:<role>)");
    add_dir(sub, o->dir);
    sub->add_option("--role", o->role, "role of the identity")->required()->check(
        CLI::IsMember({"client", "admin", "coordinator"}));
    sub->add_option("--name", o->name, "identity name: letters, digits, '.', '_', '-'")->required();
    sub->add_option("--host", o->hosts,
                    "coordinator only: extra host name or IP address the certificate names (repeatable); "
                    "localhost and 127.0.0.1 are always included");
    sub->add_option("--days", o->days, "validity in days (1..3650)")->default_val(825)->check(CLI::Range(1, 3650));
    on_run(sub, ctx, [&ctx, o] {
      return run_pki([&] {
        if (!o->hosts.empty() && o->role != "coordinator")
          throw CommandError(kUsage, "--host applies only to --role coordinator");
        pki::IssueRequest req;
        req.role = o->role;
        req.name = o->name;
        req.hosts = o->hosts;
        req.days = o->days;
        const auto c = pki::issue(o->dir, req);
        if (ctx.json) {
          print_json(std::cout, to_json(c));
        } else {
          std::cout << "issued " << c.role << " certificate '" << c.name << "' (serial " << c.serial << ", until "
                    << c.not_after << "): wrote " << c.key_path << ", " << c.cert_path << "\n";
        }
        return int(kOk);
      });
    });
  }
  {
    auto* sub = pki_cmd->add_subcommand(
        "revoke", "revoke the current certificate of NAME: adds its serial to DIR/crl.pem (re-signed, atomically)");
    add_dir(sub, o->dir);
    sub->add_option("NAME", o->name, "identity whose certificate to revoke")->required();
    on_run(sub, ctx, [&ctx, o] {
      return run_pki([&] {
        const auto c = pki::revoke(o->dir, o->name);
        if (ctx.json) {
          auto j = to_json(c);
          j["crl"] = pki::crl_path(o->dir);
          print_json(std::cout, j);
        } else {
          std::cout << "revoked '" << c.name << "' (serial " << c.serial << ") at " << c.revoked_at << ": wrote "
                    << pki::crl_path(o->dir) << "\n";
        }
        return int(kOk);
      });
    });
  }
  {
    auto* sub = pki_cmd->add_subcommand("list", "list the certificates issued from DIR (revoked ones too)");
    add_dir(sub, o->dir);
    on_run(sub, ctx, [&ctx, o] {
      return run_pki([&] {
        const auto certs = pki::list(o->dir);
        if (ctx.json) {
          auto arr = nlohmann::ordered_json::array();
          for (const auto& c : certs) arr.push_back(to_json(c));
          print_json(std::cout, arr);
        } else {
          std::vector<std::vector<std::string>> rows;
          for (const auto& c : certs)
            rows.push_back({c.name, c.role, c.serial, c.not_after, c.revoked ? "yes " + c.revoked_at : "no"});
          print_table(std::cout, {"NAME", "ROLE", "SERIAL", "NOT_AFTER", "REVOKED"}, rows);
        }
        return int(kOk);
      });
    });
  }
}

}  // namespace fl::fedctl
