#include "test/conf/support.hpp"

using conf::Template;

namespace {

Template::Values values()
{
    return Template::Values{"mes-http", "http-display", "kuma-demo", "default", "zone-1",
                            {{"team", "payments"}, {"kuma.io/display-name", "http-display"}}};
}

std::string render(std::string_view text)
{
    auto t = Template::parse(text);
    REQUIRE(t.has_value());
    auto out = t->render(values());
    REQUIRE(out.has_value());
    return *out;
}

std::string parse_error(std::string_view text)
{
    auto t = Template::parse(text);
    REQUIRE_FALSE(t.has_value());
    return t.error();
}

}  // namespace

TEST_CASE("template fields and the label function")
{
    CHECK(render("{{ .Name }}.mesh") == "mes-http.mesh");
    CHECK(render("{{.DisplayName}}.{{ .Namespace }}.svc") == "http-display.kuma-demo.svc");
    CHECK(render("{{ .Mesh }}-{{ .Zone }}") == "default-zone-1");
    CHECK(render("{{ label \"team\" }}.mesh") == "payments.mesh");
    CHECK(render("{{ label `team` }}.mesh") == "payments.mesh");
    CHECK(render("plain.text") == "plain.text");
    CHECK(render("{{/* a comment */}}{{ .Name }}") == "mes-http");
}

TEST_CASE("template trim markers remove white space next to the action")
{
    CHECK(render("  {{- .Name -}}  .mesh") == "mes-http.mesh");
    CHECK(render("a {{- .Name }} b") == "ames-http b");
    CHECK(render("a {{ .Name -}} b") == "a mes-httpb");
}

TEST_CASE("template errors in Go's words")
{
    CHECK(parse_error("{{ .Name[4 }}.mesh") == "template: :1: bad character U+005B '['");
    CHECK(parse_error("{{ .Name ") == "template: :1: unclosed action");
    CHECK(parse_error("a\nb\n{{ .Name") == "template: :3: unclosed action");
    CHECK(parse_error("{{ foo \"x\" }}") == "template: :1: function \"foo\" not defined");
    CHECK(parse_error("{{ }}") == "template: :1: missing value for command");
    CHECK(parse_error("{{ label \"x }}") == "template: :1: unterminated quoted string");
}

TEST_CASE("unsupported template syntax is named")
{
    CHECK_THAT(parse_error("{{ if .Name }}x{{ end }}"), Catch::StartsWith("unsupported template construct \"if\""));
    CHECK_THAT(parse_error("{{ range .Name }}{{ end }}"), Catch::StartsWith("unsupported template construct \"range\""));
    CHECK_THAT(parse_error("{{ .Name | printf \"%s\" }}"), Catch::StartsWith("unsupported template construct"));
    CHECK_THAT(parse_error("{{ $x := .Name }}"), Catch::StartsWith("unsupported template construct"));
    CHECK_THAT(parse_error("{{ label }}"), Catch::Contains("wrong number of args for label"));
    CHECK_THAT(parse_error("{{ label .Name }}"), Catch::Contains("label takes one quoted string"));
}

TEST_CASE("a missing label fails rendering with Kuma's message")
{
    auto t = Template::parse("{{ label \"nope\" }}.mesh");
    REQUIRE(t.has_value());
    auto out = t->render(values());
    REQUIRE_FALSE(out.has_value());
    CHECK(out.error() == "template: :1:3: executing \"\" at <label \"nope\">: error calling label: label nope not found");
}

TEST_CASE("a field the values lack fails rendering as Go's Execute does")
{
    auto t = Template::parse("x.{{ .Labels }}");
    REQUIRE(t.has_value());  // Go parses any field name
    auto out = t->render(values());
    REQUIRE_FALSE(out.has_value());
    CHECK(out.error() == "template: :1:5: executing \"\" at <.Labels>: can't evaluate field Labels in type struct "
                         "{ Name string; DisplayName string; Namespace string; Mesh string; Zone string }");
    // Positions count lines and bytes within the line, as Go does.
    auto lines = Template::parse("a\nbc{{ label `k` }}");
    REQUIRE(lines.has_value());
    CHECK(lines->render(values()).error() ==
          "template: :2:5: executing \"\" at <label `k`>: error calling label: label k not found");
}
