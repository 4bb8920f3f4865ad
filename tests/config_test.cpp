#include "sigsci/config.hpp"

#include <gtest/gtest.h>

#include <cstdlib>

#include "test_support.hpp"

namespace sigsci {
namespace {

// A valid config, with `extra` spliced in as additional top-level keys.
std::string config_text(const std::string& endpoints, const std::string& handlers,
                        const std::string& extra = "") {
    return R"({"listen": ["127.0.0.1:0"],)" + extra + R"("endpoints": )" + endpoints +
           R"(, "handlers": )" + handlers + "}";
}

const std::string one_endpoint =
    R"([{"path": "/hook", "signing_keys": [{"value": "k"}], "routes": [{"types": ["*"], "handlers": ["audit"]}]}])";
const std::string one_handler = R"({"audit": {"kind": "log"}})";

Result<Config> parse(const std::string& text, const std::filesystem::path& base = ".") {
    return parse_config(text, "test.json", base);
}

// Asserts the config is refused with exactly this message.
void expect_error(const std::string& text, const std::string& message) {
    auto r = parse(text);
    ASSERT_FALSE(r.ok()) << "accepted: " << text;
    EXPECT_EQ(r.error(), message);
}

TEST(Config, ShippedExampleIsValid) {
    auto r = load_config(std::filesystem::path(SIGSCI_SOURCE_DIR) / "config" / "example.json");
    ASSERT_TRUE(r) << r.error();
    EXPECT_EQ(r.value().endpoints.size(), 1u);
    EXPECT_EQ(r.value().handlers.size(), 3u);
    EXPECT_TRUE(r.value().warnings.empty());
}

TEST(Config, DefaultsMatchTheDocumentation) {
    auto r = parse(config_text(one_endpoint, one_handler));
    ASSERT_TRUE(r) << r.error();
    const auto& c = r.value();
    EXPECT_EQ(c.threads, 0u);
    EXPECT_EQ(c.limits.max_body_bytes, 1048576u);
    EXPECT_EQ(c.limits.max_header_bytes, 16384u);
    EXPECT_EQ(c.limits.request_timeout.count(), 15000);
    EXPECT_EQ(c.limits.idle_timeout.count(), 60000);
    EXPECT_EQ(c.limits.max_connections, 4096u);
    EXPECT_EQ(c.limits.drain_timeout.count(), 10000);
    EXPECT_EQ(c.limits.max_pending_events, 65536u);
    EXPECT_EQ(c.limits.max_unverified_body_bytes, 64u << 20);
    EXPECT_EQ(c.limits.max_unverified_body_bytes_per_ip, 16u << 20);
    EXPECT_EQ(c.log.format, log::Format::json);
    EXPECT_EQ(c.log.level, log::Level::info);
}

TEST(Config, CommentsAreAllowed) {
    auto r =
        parse("// leading\n" + config_text(one_endpoint, one_handler, R"("threads": 3, // trailing
    /* block */)"));
    ASSERT_TRUE(r) << r.error();
    EXPECT_EQ(r.value().threads, 3u);
}

TEST(Config, SyntaxErrorNamesFileAndPosition) {
    auto r = parse("{\n  \"listen\": [\n}");
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().find("test.json: not valid JSON: "), std::string::npos) << r.error();
    EXPECT_NE(r.error().find("line 3"), std::string::npos) << r.error();
}

TEST(Config, UnknownKeysAreRefusedWithTheirPath) {
    expect_error(config_text(one_endpoint, one_handler, R"("bogus": 1,)"),
                 "test.json: bogus: unknown key");
    expect_error(config_text(one_endpoint, one_handler, R"("limits": {"max_body": 5},)"),
                 "test.json: limits.max_body: unknown key");
    expect_error(config_text(one_endpoint, R"({"audit": {"kind": "log", "colour": "red"}})"),
                 "test.json: handlers.audit.colour: unknown key");
    expect_error(
        config_text(
            R"([{"path": "/a", "signing_keys": [{"value": "k"}], "routes": [{"types": ["*"], "handlers": ["audit"], "when": 1}]}])",
            one_handler),
        "test.json: endpoints[0].routes[0].when: unknown key");
}

TEST(Config, UnknownHandlerInRouteNamesTheElement) {
    expect_error(
        config_text(R"([{"path": "/a", "signing_keys": [{"value": "k"}], "routes": [
        {"types": ["*"], "handlers": ["audit"]},
        {"types": ["flag"], "handlers": ["nope", "audit"]}]}])",
                    one_handler),
        "test.json: endpoints[0].routes[1].handlers[0]: no handler named \"nope\" in \"handlers\"");
}

TEST(Config, DuplicatePathsAreRefused) {
    expect_error(config_text(R"([{"path": "/a", "signing_keys": [{"value": "k"}]},
                                {"path": "/a", "signing_keys": [{"value": "k"}]}])",
                             "{}"),
                 "test.json: endpoints[1].path: duplicate path /a");
}

TEST(Config, EmptyKeysAreRefused) {
    expect_error(config_text(R"([{"path": "/a", "signing_keys": [{"value": ""}]}])", "{}"),
                 "test.json: endpoints[0].signing_keys[0].value: key is empty");
    expect_error(config_text(R"([{"path": "/a", "signing_keys": []}])", "{}"),
                 "test.json: endpoints[0].signing_keys: needs at least one key");
    test::TempDir dir;
    test::write_file(dir / "empty.key", "\n");
    auto r =
        parse(config_text(R"([{"path": "/a", "signing_keys": [{"file": "empty.key"}]}])", "{}"),
              dir.path());
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error(), "test.json: endpoints[0].signing_keys[0].file: " +
                             (dir / "empty.key").string() + " holds an empty key");
}

TEST(Config, KeySourceNeedsExactlyOneKind) {
    expect_error(
        config_text(R"([{"path": "/a", "signing_keys": [{"value": "k", "env": "X"}]}])", "{}"),
        "test.json: endpoints[0].signing_keys[0]: needs exactly one of \"file\", \"env\", "
        "\"credential\", \"value\"");
    expect_error(config_text(R"([{"path": "/a", "signing_keys": [{}]}])", "{}"),
                 "test.json: endpoints[0].signing_keys[0]: needs exactly one of \"file\", \"env\", "
                 "\"credential\", \"value\"");
}

TEST(Config, KeyFileHasTrailingNewlinesTrimmedAndResolvesRelativeToConfig) {
    test::TempDir dir;
    test::write_file(dir / "a.key", "secret-a\n");
    test::write_file(dir / "b.key", "secret b \r\n");
    auto r = parse(config_text(R"([{"path": "/a", "signing_keys": [{"file": "a.key"}, {"file": ")" +
                                   (dir / "b.key").string() + R"("}]}])",
                               "{}"),
                   dir.path());
    ASSERT_TRUE(r) << r.error();
    EXPECT_EQ(r.value().endpoints[0].signing_keys,
              (std::vector<std::string>{"secret-a", "secret b "}));
}

TEST(Config, MissingKeyFileNamesThePath) {
    auto r = parse(
        config_text(R"([{"path": "/a", "signing_keys": [{"file": "/nonexistent/k"}]}])", "{}"));
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error(),
              "test.json: endpoints[0].signing_keys[0].file: cannot read /nonexistent/k: No such "
              "file or directory");
}

TEST(Config, EnvAndCredentialKeySources) {
    ::setenv("SIGSCI_TEST_KEY_A", "from-env", 1);
    ::unsetenv("SIGSCI_TEST_KEY_MISSING");
    test::TempDir creds;
    test::write_file(creds / "prod-key", "from-credential\n");
    ::setenv("CREDENTIALS_DIRECTORY", creds.path().c_str(), 1);
    auto r = parse(config_text(
        R"([{"path": "/a", "signing_keys": [{"env": "SIGSCI_TEST_KEY_A"}, {"credential": "prod-key"}]}])",
        "{}"));
    ASSERT_TRUE(r) << r.error();
    EXPECT_EQ(r.value().endpoints[0].signing_keys,
              (std::vector<std::string>{"from-env", "from-credential"}));
    expect_error(
        config_text(R"([{"path": "/a", "signing_keys": [{"env": "SIGSCI_TEST_KEY_MISSING"}]}])",
                    "{}"),
        "test.json: endpoints[0].signing_keys[0].env: environment variable SIGSCI_TEST_KEY_MISSING "
        "is not set");
    expect_error(
        config_text(R"([{"path": "/a", "signing_keys": [{"credential": "../etc/passwd"}]}])", "{}"),
        "test.json: endpoints[0].signing_keys[0].credential: must be a credential name, not a "
        "path");
    ::unsetenv("CREDENTIALS_DIRECTORY");
    expect_error(
        config_text(R"([{"path": "/a", "signing_keys": [{"credential": "prod-key"}]}])", "{}"),
        "test.json: endpoints[0].signing_keys[0].credential: $CREDENTIALS_DIRECTORY is not set "
        "(credentials need systemd's LoadCredential=)");
    ::unsetenv("SIGSCI_TEST_KEY_A");
}

TEST(Config, InlineKeyValueIsWarnedAbout) {
    auto r = parse(config_text(one_endpoint, one_handler));
    ASSERT_TRUE(r);
    ASSERT_EQ(r.value().warnings.size(), 1u);
    EXPECT_NE(r.value().warnings[0].find("endpoints[0].signing_keys[0].value"), std::string::npos);
}

TEST(Config, KeysNeverAppearInErrors) {
    auto r = parse(config_text(
        R"([{"path": "/a", "signing_keys": [{"value": "TOP-SECRET-KEY"}], "routes": [{"types": ["*"], "handlers": ["x"]}]}])",
        "{}"));
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().find("TOP-SECRET-KEY"), std::string::npos) << r.error();
}

TEST(Config, ListenAddresses) {
    auto r = parse(
        R"({"listen": ["127.0.0.1:8080", "[::1]:9090", {"address": "0.0.0.0:0"}], "endpoints": )" +
        one_endpoint + R"(, "handlers": )" + one_handler + "}");
    ASSERT_TRUE(r) << r.error();
    const auto& l = r.value().listen;
    ASSERT_EQ(l.size(), 3u);
    EXPECT_EQ(l[0].host, "127.0.0.1");
    EXPECT_EQ(l[0].port, 8080);
    EXPECT_EQ(l[1].host, "::1");
    EXPECT_EQ(l[1].port, 9090);
    EXPECT_EQ(l[2].host, "0.0.0.0");
    auto with_listen = [&](const std::string& listen) {
        return R"({"listen": )" + listen + R"(, "endpoints": )" + one_endpoint +
               R"(, "handlers": )" + one_handler + "}";
    };
    expect_error(with_listen(R"(["localhost:80"])"),
                 "test.json: listen[0]: \"localhost\" is not an IPv4 address (IPv6 goes in "
                 "brackets; host names are not resolved)");
    expect_error(with_listen(R"(["127.0.0.1:70000"])"),
                 "test.json: listen[0]: port must be a number from 0 to 65535");
    expect_error(with_listen(R"(["127.0.0.1"])"),
                 "test.json: listen[0]: must look like \"127.0.0.1:8080\"");
    expect_error(with_listen(R"([])"), "test.json: listen: needs at least one address");
    // TLS files are loaded at config time, so a missing one is a config error.
    expect_error(with_listen(R"([{"address": "0.0.0.0:8443", "tls": {"cert": "/nonexistent/c",
                                                                      "key": "/nonexistent/k"}}])"),
                 "test.json: listen[0].tls: cannot load certificate chain /nonexistent/c: "
                 "error:80000002:system library::No such file or directory");
    expect_error(with_listen(R"([{"address": "0.0.0.0:8443", "tls": {"cert": "c"}}])"),
                 "test.json: listen[0].tls: missing required key \"key\"");
}

TEST(Config, NumbersAreRangeChecked) {
    expect_error(config_text(one_endpoint, one_handler, R"("threads": -1,)"),
                 "test.json: threads: must be a whole number from 0 to 256");
    expect_error(config_text(one_endpoint, one_handler, R"("threads": 1.5,)"),
                 "test.json: threads: must be a whole number from 0 to 256");
    expect_error(config_text(one_endpoint, one_handler, R"("limits": {"max_body_bytes": 0},)"),
                 "test.json: limits.max_body_bytes: must be a whole number from 1 to 1073741824");
    expect_error(
        config_text(one_endpoint, one_handler, R"("limits": {"request_timeout_ms": "15s"},)"),
        "test.json: limits.request_timeout_ms: must be a whole number from 1 to 86400000");
}

// The budget for bodies not yet verified never keeps a body of max_body_bytes out: left out,
// it grows to it; set below it, it is an error that says why.
TEST(Config, UnverifiedBodyBudgetIsAtLeastTheLargestBody) {
    auto big = parse(
        config_text(one_endpoint, one_handler, R"("limits": {"max_body_bytes": 134217728},)"));
    ASSERT_TRUE(big) << big.error();
    EXPECT_EQ(big.value().limits.max_unverified_body_bytes, 134217728u);
    auto set = parse(config_text(one_endpoint, one_handler,
                                 R"("limits": {"max_unverified_body_bytes": 2097152},)"));
    ASSERT_TRUE(set) << set.error();
    EXPECT_EQ(set.value().limits.max_unverified_body_bytes, 2097152u);
    expect_error(
        config_text(one_endpoint, one_handler,
                    R"("limits": {"max_body_bytes": 2000, "max_unverified_body_bytes": 1999},)"),
        "test.json: limits.max_unverified_body_bytes: must be at least "
        "limits.max_body_bytes (2000), or no body of that size is ever read");
}

// One client's share of that budget: left out, a quarter of it but at least one largest body,
// and none behind a proxy (max_connections_per_ip 0); set, 0 or at least one largest body.
TEST(Config, UnverifiedBodyShareOfOneClientIsAQuarterOrAtLeastTheLargestBody) {
    const auto limits = [](const std::string& text) {
        auto c = parse(config_text(one_endpoint, one_handler, R"("limits": {)" + text + "},"));
        EXPECT_TRUE(c) << c.error();
        return c ? c.value().limits : Limits{};
    };
    EXPECT_EQ(limits(R"("max_unverified_body_bytes": 8000000)").max_unverified_body_bytes_per_ip,
              2000000u);
    EXPECT_EQ(limits(R"("max_body_bytes": 3000000, "max_unverified_body_bytes": 8000000)")
                  .max_unverified_body_bytes_per_ip,
              3000000u);
    EXPECT_EQ(limits(R"("max_connections_per_ip": 0)").max_unverified_body_bytes_per_ip, 0u);
    EXPECT_EQ(limits(R"("max_unverified_body_bytes_per_ip": 0)").max_unverified_body_bytes_per_ip,
              0u);
    EXPECT_EQ(
        limits(R"("max_unverified_body_bytes_per_ip": 5000000)").max_unverified_body_bytes_per_ip,
        5000000u);
    expect_error(config_text(one_endpoint, one_handler,
                             R"("limits": {"max_body_bytes": 2000, )"
                             R"("max_unverified_body_bytes_per_ip": 1999},)"),
                 "test.json: limits.max_unverified_body_bytes_per_ip: must be 0 or at least "
                 "limits.max_body_bytes (2000), or no body of that size is ever read");
}

TEST(Config, PendingBytesAreAtLeastTheLargestBody) {
    auto dflt = parse(config_text(one_endpoint, one_handler, ""));
    ASSERT_TRUE(dflt) << dflt.error();
    EXPECT_EQ(dflt.value().limits.max_pending_bytes, 64u << 20);
    auto big = parse(
        config_text(one_endpoint, one_handler, R"("limits": {"max_body_bytes": 134217728},)"));
    ASSERT_TRUE(big) << big.error();
    EXPECT_EQ(big.value().limits.max_pending_bytes, 134217728u);
    auto set = parse(
        config_text(one_endpoint, one_handler, R"("limits": {"max_pending_bytes": 2097152},)"));
    ASSERT_TRUE(set) << set.error();
    EXPECT_EQ(set.value().limits.max_pending_bytes, 2097152u);
    expect_error(config_text(one_endpoint, one_handler,
                             R"("limits": {"max_body_bytes": 2000, "max_pending_bytes": 1999},)"),
                 "test.json: limits.max_pending_bytes: must be at least limits.max_body_bytes "
                 "(2000), or no event of that size is ever accepted");
}

TEST(Config, LogSettings) {
    auto r = parse(
        config_text(one_endpoint, one_handler, R"("log": {"format": "text", "level": "debug"},)"));
    ASSERT_TRUE(r) << r.error();
    EXPECT_EQ(r.value().log.format, log::Format::text);
    EXPECT_EQ(r.value().log.level, log::Level::debug);
    expect_error(config_text(one_endpoint, one_handler, R"("log": {"format": "xml"},)"),
                 "test.json: log.format: must be \"json\" or \"text\"");
}

TEST(Config, EndpointPaths) {
    expect_error(config_text(R"([{"path": "hook", "signing_keys": [{"value": "k"}]}])", "{}"),
                 "test.json: endpoints[0].path: must start with '/'");
    expect_error(config_text(R"([{"path": "/healthz", "signing_keys": [{"value": "k"}]}])", "{}"),
                 "test.json: endpoints[0].path: /healthz is reserved for the health check");
    expect_error(
        config_text(R"([{"path": "/a?b", "signing_keys": [{"value": "k"}]}])", "{}"),
        "test.json: endpoints[0].path: must not contain spaces, control characters, '?' or '#'");
    expect_error(R"({"listen": ["127.0.0.1:0"], "endpoints": []})",
                 "test.json: endpoints: needs at least one endpoint");
    expect_error(R"({"listen": ["127.0.0.1:0"]})", "test.json: missing required key \"endpoints\"");
}

TEST(Config, RoutesNeedTypesAndHandlers) {
    expect_error(
        config_text(
            R"([{"path": "/a", "signing_keys": [{"value": "k"}], "routes": [{"types": [], "handlers": ["audit"]}]}])",
            one_handler),
        "test.json: endpoints[0].routes[0].types: must not be empty");
    expect_error(
        config_text(
            R"([{"path": "/a", "signing_keys": [{"value": "k"}], "routes": [{"types": ["flag"]}]}])",
            one_handler),
        "test.json: endpoints[0].routes[0]: missing required key \"handlers\"");
    expect_error(
        config_text(
            R"([{"path": "/a", "signing_keys": [{"value": "k"}], "routes": [{"types": [""], "handlers": ["audit"]}]}])",
            one_handler),
        "test.json: endpoints[0].routes[0].types[0]: must not be empty");
}

TEST(Config, HandlerKindsAreValidated) {
    expect_error(config_text(one_endpoint, R"({"audit": {"kind": "carrier-pigeon"}})"),
                 "test.json: handlers.audit.kind: unknown handler kind \"carrier-pigeon\" (this "
                 "version has: log, file, exec, forward)");
    expect_error(config_text(one_endpoint, R"({"audit": {"kind": "file"}})"),
                 "test.json: handlers.audit: missing required key \"path\"");
    expect_error(config_text(one_endpoint, R"({"audit": {"kind": "log", "payload": "most"}})"),
                 "test.json: handlers.audit.payload: must be \"full\", \"summary\" or \"none\"");
    expect_error(config_text(one_endpoint, R"({"audit": {}})"),
                 "test.json: handlers.audit: missing required key \"kind\"");
    expect_error(
        config_text(one_endpoint, R"({"audit": {"kind": "log"}, "bad name": {"kind": "log"}})"),
        "test.json: handlers.bad name: handler names may use only letters, digits, '-', '_' and "
        "'.'");
}

TEST(Config, FileHandlerPathResolvesAgainstConfigDirectory) {
    auto r = parse(
        config_text(one_endpoint, R"({"audit": {"kind": "file", "path": "out/events.jsonl"}})"),
        "/etc/sigsci");
    ASSERT_TRUE(r) << r.error();
    EXPECT_EQ(r.value().handlers[0].summary, "path: /etc/sigsci/out/events.jsonl");
}

TEST(Config, UnusedHandlerIsWarnedAbout) {
    auto r =
        parse(config_text(one_endpoint, R"({"audit": {"kind": "log"}, "spare": {"kind": "log"}})"));
    ASSERT_TRUE(r) << r.error();
    EXPECT_NE(std::find(r.value().warnings.begin(), r.value().warnings.end(),
                        "handlers.spare: not used by any route"),
              r.value().warnings.end());
}

TEST(Config, SpoolDefaults) {
    ::unsetenv("STATE_DIRECTORY");
    auto r = parse(config_text(one_endpoint, one_handler));
    ASSERT_TRUE(r) << r.error();
    const auto& s = r.value().spool;
    EXPECT_TRUE(s.enabled);
    EXPECT_EQ(s.path, std::filesystem::absolute("spool.db"));
    EXPECT_EQ(s.max_bytes, 0u);
    EXPECT_EQ(s.retention.count(), 86400);
    EXPECT_EQ(s.duplicate_window.count(), 600);
    EXPECT_EQ(s.retry.initial_delay.count(), 1000);
    EXPECT_EQ(s.retry.max_delay.count(), 300000);
    EXPECT_EQ(s.retry.max_attempts, 10);
}

TEST(Config, SpoolDefaultsToTheSystemdStateDirectory) {
    ::setenv("STATE_DIRECTORY", "/var/lib/sigsci-webhookd:/var/lib/other", 1);
    auto r = parse(config_text(one_endpoint, one_handler));
    ::unsetenv("STATE_DIRECTORY");
    ASSERT_TRUE(r) << r.error();
    EXPECT_EQ(r.value().spool.path, "/var/lib/sigsci-webhookd/spool.db");
}

TEST(Config, SpoolSettings) {
    auto r = parse(config_text(one_endpoint, one_handler, R"("spool": {"path": "state/spool.db",
        "max_bytes": 1000000, "retention_s": 3600, "duplicate_window_s": 0,
        "retry": {"initial_delay_ms": 50, "max_delay_ms": 1000, "max_attempts": 3}},)"),
                   "/srv/sigsci");
    ASSERT_TRUE(r) << r.error();
    const auto& s = r.value().spool;
    EXPECT_EQ(s.path, "/srv/sigsci/state/spool.db");
    EXPECT_EQ(s.max_bytes, 1000000u);
    EXPECT_EQ(s.retention.count(), 3600);
    EXPECT_EQ(s.duplicate_window.count(), 0);
    EXPECT_EQ(s.retry.max_attempts, 3);
    expect_error(
        config_text(one_endpoint, one_handler,
                    R"("spool": {"retry": {"initial_delay_ms": 500, "max_delay_ms": 100}},)"),
        "test.json: spool.retry.max_delay_ms: must not be less than initial_delay_ms");
    expect_error(config_text(one_endpoint, one_handler,
                             R"("spool": {"retention_s": 60, "duplicate_window_s": 120},)"),
                 "test.json: spool.duplicate_window_s: must not be longer than retention_s (events "
                 "are pruned after it)");
    expect_error(
        config_text(one_endpoint, one_handler, R"("spool": {"retry": {"max_attempts": 0}},)"),
        "test.json: spool.retry.max_attempts: must be a whole number from 1 to 1000");
    expect_error(config_text(one_endpoint, one_handler, R"("spool": {"dir": "/x"},)"),
                 "test.json: spool.dir: unknown key");
}

TEST(Config, RetryDelaysGrowExponentiallyWithJitterUpToTheCap) {
    RetryPolicy p;
    p.initial_delay = std::chrono::milliseconds(100);
    p.max_delay = std::chrono::milliseconds(1000);
    // Jitter picks a point in the upper half of each step.
    EXPECT_EQ(p.delay_after(1, 0.0).count(), 50);
    EXPECT_EQ(p.delay_after(1, 0.999999).count(), 99);
    EXPECT_EQ(p.delay_after(2, 0.0).count(), 100);
    EXPECT_EQ(p.delay_after(3, 0.0).count(), 200);
    EXPECT_EQ(p.delay_after(4, 0.0).count(), 400);
    EXPECT_EQ(p.delay_after(5, 0.0).count(), 500);   // 800 capped to 1000, halved
    EXPECT_EQ(p.delay_after(60, 0.0).count(), 500);  // no overflow far out
}

// A path given by mistake (a device, a big log) is refused after 4 MiB, not read for ever.
TEST(Config, LoadConfigRefusesAFileThatNeverEnds) {
    auto r = load_config("/dev/zero");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error(), "/dev/zero: larger than 4 MiB; is it the config file?");
}

TEST(Config, LoadConfigNamesAMissingFile) {
    auto r = load_config("/nonexistent/sigsci.json");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error(), "/nonexistent/sigsci.json: cannot read: No such file or directory");
}

}  // namespace
}  // namespace sigsci

namespace sigsci {
namespace {

TEST(Config, AdminListenerIsOffUnlessConfigured) {
    auto r = parse(config_text(one_endpoint, one_handler));
    ASSERT_TRUE(r) << r.error();
    EXPECT_TRUE(r.value().admin.listen.empty());
}

TEST(Config, AdminListenerDefaultsToLoopback9102) {
    auto r = parse(config_text(one_endpoint, one_handler, R"("admin": {},)"));
    ASSERT_TRUE(r) << r.error();
    ASSERT_EQ(r.value().admin.listen.size(), 1u);
    EXPECT_EQ(r.value().admin.listen[0].address, "127.0.0.1:9102");
    EXPECT_EQ(r.value().admin.listen[0].port, 9102);
    for (const auto& w : r.value().warnings) EXPECT_EQ(w.find("admin"), std::string::npos) << w;
}

TEST(Config, AdminListenerBeyondLoopbackIsWarnedAbout) {
    auto r = parse(config_text(one_endpoint, one_handler,
                               R"("admin": {"listen": ["[::1]:0", "0.0.0.0:9102"]},)"));
    ASSERT_TRUE(r) << r.error();
    std::vector<std::string> admin_warnings;
    for (const auto& w : r.value().warnings) {
        if (w.starts_with("admin")) admin_warnings.push_back(w);
    }
    EXPECT_EQ(admin_warnings,
              std::vector<std::string>{"admin.listen[1]: 0.0.0.0:9102 is not loopback; /metrics "
                                       "will be reachable from other hosts"});
}

TEST(Config, AdminListenerErrorsNameTheKeyPath) {
    expect_error(config_text(one_endpoint, one_handler, R"("admin": {"listen": []},)"),
                 "test.json: admin.listen: needs at least one address (leave out \"admin\" to "
                 "have no admin listener)");
    expect_error(config_text(one_endpoint, one_handler, R"("admin": {"listen": ["localhost:1"]},)"),
                 "test.json: admin.listen[0]: \"localhost\" is not an IPv4 address (IPv6 goes in "
                 "brackets; host names are not resolved)");
    expect_error(config_text(one_endpoint, one_handler, R"("admin": {"port": 1},)"),
                 "test.json: admin.port: unknown key");
}

}  // namespace
}  // namespace sigsci

namespace sigsci {
namespace {

TEST(Config, ReplayWindowSettings) {
    auto r = parse(config_text(
        R"([{"path": "/hook", "signing_keys": [{"value": "k"}], "max_age_s": 300,
             "max_future_s": 30, "unparseable_created": "accept"},
            {"path": "/open", "signing_keys": [{"value": "k"}]}])",
        one_handler));
    ASSERT_TRUE(r) << r.error();
    const auto& w = r.value().endpoints[0].replay;
    EXPECT_EQ(w.max_age.count(), 300);
    EXPECT_EQ(w.max_future.count(), 30);
    EXPECT_TRUE(w.accept_unparseable);
    EXPECT_EQ(r.value().endpoints[1].replay.max_age.count(), 0);  // off unless configured
    expect_error(
        config_text(R"([{"path": "/h", "signing_keys": [{"value": "k"}], "max_future_s": 30}])",
                    one_handler),
        "test.json: endpoints[0].max_future_s: needs max_age_s");
    expect_error(config_text(R"([{"path": "/h", "signing_keys": [{"value": "k"}],
                                  "max_age_s": 60, "unparseable_created": "maybe"}])",
                             one_handler),
                 "test.json: endpoints[0].unparseable_created: must be \"reject\" or \"accept\"");
    expect_error(
        config_text(R"([{"path": "/h", "signing_keys": [{"value": "k"}], "max_age_s": 0}])",
                    one_handler),
        "test.json: endpoints[0].max_age_s: must be a whole number from 1 to 31622400");
}

}  // namespace
}  // namespace sigsci

namespace sigsci {
namespace {

// Found by fuzz/config_fuzz.cpp: nlohmann reports a number too large for a double as
// out_of_range, not parse_error, and it escaped parse_config (a SIGHUP with such a file ended
// the daemon).
TEST(Config, NumberTooLargeIsAConfigErrorNotACrash) {
    auto r = parse(R"({"listen": ["127.0.0.1:0"], "threads": 1e999999999})");
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(
        r.error().rfind("test.json: not valid JSON: number overflow parsing '1e999999999'", 0), 0u)
        << r.error();
}

}  // namespace
}  // namespace sigsci
