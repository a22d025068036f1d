#include "common/config/yaml_config.h"

#include <yaml-cpp/yaml.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <exception>
#include <iostream>
#include <set>
#include <sstream>
#include <utility>

namespace fl {
namespace {

std::string dashed(std::string key) {
    std::replace(key.begin(), key.end(), '_', '-');
    return key;
}

std::string node_kind(const YAML::Node& node) {
    switch (node.Type()) {
        case YAML::NodeType::Sequence: return "list";
        case YAML::NodeType::Map: return "mapping";
        case YAML::NodeType::Null: return "empty value";
        default: return "plain value";
    }
}

std::string at_line(const YAML::Node& node) {
    const YAML::Mark mark = node.Mark();
    return mark.is_null() ? std::string() : " at line " + std::to_string(mark.line + 1);
}

// Same lookups, in the same order, as CLI::App::_parse_single_config, so that a key we
// accept is one CLI11 will fill.
const CLI::Option* lookup_option(const CLI::App* app, const std::string& name) {
    const CLI::Option* op = app->get_option_no_throw("--" + name);
    if (op == nullptr && name.size() == 1) op = app->get_option_no_throw("-" + name);
    if (op == nullptr) op = app->get_option_no_throw(name);
    return op;
}

const CLI::App* lookup_subcommand(const CLI::App* app, const std::string& name) {
    try {
        return app->get_subcommand(name);
    } catch (const CLI::OptionNotFound&) {
        return nullptr;
    }
}

class Flattener {
  public:
    explicit Flattener(std::string file) : file_(std::move(file)) {}

    CLI::ConfigError fail(const std::string& what) const {
        return CLI::ConfigError("config file " + file_ + ": " + what);
    }

    // Appends the items of one mapping; app is the (sub)command whose options it holds,
    // or null when the formatter has no app to check against.
    void mapping(const YAML::Node& map, const CLI::App* app,
                 const std::vector<std::string>& parents, const std::string& path,
                 std::vector<CLI::ConfigItem>& out) {
        for (const auto& kv : map) {
            if (!kv.first.IsScalar())
                throw fail("keys must be option names, found a " + node_kind(kv.first) +
                           at_line(kv.first));
            const std::string raw = kv.first.Scalar();
            const std::string shown = path + raw;
            const YAML::Node& value = kv.second;

            if (value.IsMap()) {
                // A nested mapping holds the options of the subcommand of that name.
                std::string name = dashed(raw);
                const CLI::App* sub = nullptr;
                if (app != nullptr) {
                    sub = lookup_subcommand(app, raw);
                    if (sub != nullptr) {
                        name = raw;
                    } else if ((sub = lookup_subcommand(app, name)) == nullptr) {
                        throw fail("unknown key '" + shown + "'" + at_line(kv.first) +
                                   " (only a subcommand's name takes a mapping)");
                    }
                    name = sub->get_name();
                }
                std::vector<std::string> inner = parents;
                inner.push_back(name);
                // "++"/"--" open and close the section as CLI11's own INI reader does, so
                // configurable subcommands are marked as used.
                out.push_back(CLI::ConfigItem{inner, "++", {}});
                mapping(value, sub, inner, shown + ".", out);
                out.push_back(CLI::ConfigItem{inner, "--", {}});
                continue;
            }

            std::string name = dashed(raw);
            if (app != nullptr) {
                const CLI::Option* op = lookup_option(app, raw);
                if (op != nullptr) {
                    name = raw;
                } else if ((op = lookup_option(app, name)) == nullptr) {
                    if (lookup_subcommand(app, raw) != nullptr ||
                        lookup_subcommand(app, name) != nullptr)
                        throw fail("key '" + shown + "'" + at_line(kv.first) +
                                   " is a subcommand: give its options as a mapping under it");
                    throw fail("unknown key '" + shown + "'" + at_line(kv.first));
                }
                if (!op->get_configurable())
                    throw fail("key '" + shown + "'" + at_line(kv.first) +
                               " cannot be set in a config file");
            }
            if (!seen_.insert(path + name).second)
                throw fail("key '" + shown + "'" + at_line(kv.first) + " is given twice");

            CLI::ConfigItem item{parents, name, {}};
            if (value.IsScalar()) {
                // Raw text, not a re-formatted number: CLI11 converts it like a flag value.
                item.inputs.push_back(value.Scalar());
            } else if (value.IsSequence()) {
                for (const auto& element : value) {
                    if (!element.IsScalar())
                        throw fail("key '" + shown + "'" + at_line(element) +
                                   ": list items must be plain values, found a " +
                                   node_kind(element));
                    item.inputs.push_back(element.Scalar());
                }
            } else {
                // `key:` with nothing after it is almost always a slip, not "use default".
                throw fail("key '" + shown + "'" + at_line(kv.first) + " has no value");
            }
            out.push_back(std::move(item));
        }
    }

  private:
    std::string file_;
    std::set<std::string> seen_;
};

// ---- to_config ---------------------------------------------------------------------

struct Entry {
    std::string name;
    std::vector<std::string> values;
    bool list = false;
    std::string description;
};

struct Section {
    std::vector<Entry> entries;
    std::vector<std::pair<std::string, Section>> subsections;
    bool empty() const { return entries.empty() && subsections.empty(); }
};

// CLI11 renders vector defaults as "[a,b]".
std::vector<std::string> split_default(const std::string& text, bool list) {
    if (!list || text.size() < 2 || text.front() != '[' || text.back() != ']') return {text};
    std::vector<std::string> parts;
    std::stringstream inner(text.substr(1, text.size() - 2));
    std::string part;
    while (std::getline(inner, part, ',')) parts.push_back(CLI::detail::trim_copy(part));
    return parts;
}

void collect(const CLI::App* app, bool default_also, Section& section) {
    for (const CLI::Option* opt : app->get_options({})) {
        if (!opt->get_configurable()) continue;
        Entry entry;
        entry.name = opt->get_single_name();
        if (entry.name.empty()) continue;
        entry.list = opt->get_items_expected_max() > 1;
        entry.values = opt->reduced_results();
        if (entry.values.empty() && default_also) {
            if (!opt->get_default_str().empty())
                entry.values = split_default(opt->get_default_str(), entry.list);
            else if (opt->get_expected_min() == 0)
                entry.values = {"false"};  // an unset flag
        }
        if (entry.values.empty()) continue;
        entry.list = entry.list || entry.values.size() > 1;
        entry.description = opt->get_description();
        std::replace(entry.description.begin(), entry.description.end(), '\n', ' ');
        section.entries.push_back(std::move(entry));
    }
    for (const CLI::App* sub : app->get_subcommands({})) {
        if (sub->get_name().empty()) {
            collect(sub, default_also, section);  // option groups live at the same level
        } else {
            Section child;
            collect(sub, default_also, child);
            if (!child.empty()) section.subsections.emplace_back(sub->get_name(), std::move(child));
        }
    }
}

void emit(YAML::Emitter& out, const Section& section, bool write_description) {
    out << YAML::BeginMap;
    for (const Entry& e : section.entries) {
        out << YAML::Key << e.name << YAML::Value;
        if (e.list) {
            out << YAML::Flow << YAML::BeginSeq;
            for (const auto& v : e.values) out << v;
            out << YAML::EndSeq;
        } else {
            out << e.values.front();
        }
        if (write_description && !e.description.empty()) out << YAML::Comment(e.description);
    }
    for (const auto& [name, child] : section.subsections) {
        out << YAML::Key << name << YAML::Value;
        emit(out, child, write_description);
    }
    out << YAML::EndMap;
}

}  // namespace

std::string YamlConfig::source_name() const {
    if (app_ != nullptr) {
        if (const CLI::Option* config = app_->get_config_ptr()) {
            // add_config_option keeps only the last --config, so this is the file being read.
            const auto names = config->as<std::vector<std::string>>();
            if (names.size() == 1 && !names.front().empty()) return names.front();
        }
    }
    return "<input>";
}

std::vector<CLI::ConfigItem> YamlConfig::from_config(std::istream& input) const {
    Flattener flattener(source_name());
    YAML::Node root;
    try {
        root = YAML::Load(input);
    } catch (const YAML::ParserException& e) {
        const std::string where =
            e.mark.is_null() ? std::string() : " at line " + std::to_string(e.mark.line + 1);
        throw flattener.fail("invalid YAML" + where + ": " + e.msg);
    }
    std::vector<CLI::ConfigItem> items;
    if (root.IsNull()) return items;  // an empty file sets nothing
    if (!root.IsMap())
        throw flattener.fail("the top level must be a mapping of option names to values, not a " +
                             node_kind(root));
    flattener.mapping(root, app_, {}, "", items);
    return items;
}

std::string YamlConfig::to_config(const CLI::App* app, bool default_also, bool write_description,
                                  std::string /*prefix: subcommands nest instead*/) const {
    Section section;
    collect(app, default_also, section);
    YAML::Emitter out;
    emit(out, section, write_description);
    return std::string(out.c_str()) + "\n";
}

void add_config_option(CLI::App& app) {
    app.config_formatter(std::make_shared<YamlConfig>(&app));
    // One file only (the last --config wins), so errors can name the file being read.
    app.set_config("--config", "", "YAML file with any of the flags below as keys")
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
}

void add_logging_options(CLI::App& app, std::string& level, std::string& format) {
    app.add_option("--log-level", level, "trace | debug | info | warn | error | off")->capture_default_str();
    app.add_option("--log-format", format, "text (for people) | json (one object per line, for log shippers)")
        ->check(CLI::IsMember({"text", "json"}))->capture_default_str();
}

int run_cli(CLI::App& app, int argc, char** argv, std::function<int()> body) {
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        // app.exit prints help (code 0) or the error; CLI11's own codes (100+) are
        // collapsed to the conventional 2 for any usage error.
        const int code = app.exit(e);
        return code == 0 ? 0 : 2;
    }
    try {
        return body();
    } catch (const std::exception& e) {
        spdlog::default_logger()->flush();  // keep earlier log lines before the error
        std::cerr << "error: " << e.what() << std::endl;
        return 1;
    }
}

}  // namespace fl
