using System.Text.Json;
using EventPipeline.Producer.Validation;
using Microsoft.Extensions.Options;

namespace EventPipeline.Producer.UnitTests;

public sealed class EventValidatorTests
{
    private static (ValidatedEvent? Event, Dictionary<string, string[]> Errors) Validate(string json, bool testEvents = false)
    {
        var errors = new Dictionary<string, string[]>();
        using var document = JsonDocument.Parse(json);
        var targets = new DownstreamTargets(Options.Create(new DownstreamTargetOptions { AllowedOrigins = ["https://hooks.example.com", "http://localhost:5183"] }));
        var result = new EventValidator(EventRouterTests.Router(testEvents), targets).Validate(document.RootElement, "", errors);
        return (result, errors);
    }

    [Fact]
    public void Valid_pbkdf2_event_gets_an_id_and_the_cpu_lane()
    {
        var (e, errors) = Validate("""{"type":"hash.pbkdf2","payload":{"data":"abc","iterations":10000}}""");

        Assert.Empty(errors);
        Assert.NotNull(e);
        Assert.Equal("cpu", e.Lane);
        Assert.Equal(32, e.Id.Length);
        Assert.Equal("""{"data":"abc","iterations":10000}""", e.Payload);
    }

    [Theory]
    [InlineData("""{"type":"hash.pbkdf2","payload":{"data":"abc","iterations":10000}}""")]
    [InlineData("""{"id":"x-1","type":"webhook.post","payload":{ "n" : 1, "s":"caf\u00e9 \"q\" \ud83d\ude00", "a":[1,2.50,{"b":null}] }}""")]
    [InlineData("""{"type":"noop.io","payload":{},"delay":5}""")]
    public void An_event_validated_in_its_body_has_the_payload_text_of_one_validated_alone(string json)
    {
        using var document = JsonDocument.Parse(json);
        var targets = new DownstreamTargets(Options.Create(new DownstreamTargetOptions()));
        var validator = new EventValidator(EventRouterTests.Router(), targets);

        var alone = validator.Validate(document.RootElement, "", []);
        var inBody = validator.ValidateInBody(document.RootElement, "", []);

        Assert.NotNull(alone);
        Assert.NotNull(inBody);
        Assert.Equal(alone.Payload, inBody.Payload);
        Assert.Equal(System.Text.Encoding.UTF8.GetBytes(alone.Payload), inBody.PayloadUtf8);
        Assert.Equal(System.Text.Encoding.UTF8.GetBytes(alone.Payload), alone.PayloadUtf8);
        Assert.Equal((alone.Type, alone.Lane, alone.ClientGivenId, alone.IsTimed), (inBody.Type, inBody.Lane, inBody.ClientGivenId, inBody.IsTimed));
    }

    [Theory]
    [InlineData("noop.cpu")]
    [InlineData("noop.io")]
    public void A_payload_holding_bytes_that_are_not_utf8_is_a_client_error_in_a_body_as_alone(string type)
    {
        // JsonDocument.Parse does not check the UTF-8 inside string values; a payload field no check reads ("x") may hold
        // any bytes. Such an event must be a 400, in a submission's body too, never written to a lane or a 500.
        var json = System.Text.Encoding.UTF8.GetBytes("{\"type\":\"" + type + "\",\"payload\":{\"x\":\"ab\"}}");
        var at = Array.IndexOf(json, (byte)'b');
        json[at - 1] = 0xC3;
        json[at] = 0x28; // C3 28: a two-byte sequence whose second byte is not a continuation byte
        using var document = JsonDocument.Parse(json);
        var targets = new DownstreamTargets(Options.Create(new DownstreamTargetOptions()));
        var validator = new EventValidator(EventRouterTests.Router(), targets);

        var aloneErrors = new Dictionary<string, string[]>();
        var inBodyErrors = new Dictionary<string, string[]>();
        var alone = validator.Validate(document.RootElement, "events[0]", aloneErrors);
        var inBody = validator.ValidateInBody(document.RootElement, "events[0]", inBodyErrors);

        Assert.True(alone is null && aloneErrors.Count > 0, $"validated alone: {(alone is null ? "no event" : "an event")} and {aloneErrors.Count} errors");
        Assert.True(inBody is null && inBodyErrors.Count > 0,
            $"validated in its body, a payload that is not UTF-8 was accepted ({inBodyErrors.Count} errors): its bytes would be written to the lane as they are");
    }

    [Fact]
    public void Client_given_id_is_kept()
    {
        var (e, _) = Validate("""{"id":"order-17:a","type":"webhook.post","payload":{}}""");

        Assert.Equal("order-17:a", e?.Id);
        Assert.Equal("io", e?.Lane);
    }

    [Theory]
    [InlineData("""{"id":"","type":"noop.cpu","payload":{}}""", "id")]
    [InlineData("""{"id":"a/b","type":"noop.cpu","payload":{}}""", "id")]
    [InlineData("""{"id":42,"type":"noop.cpu","payload":{}}""", "id")]
    [InlineData("""{"payload":{}}""", "type")]
    [InlineData("""{"type":7,"payload":{}}""", "type")]
    [InlineData("""{"type":"nope","payload":{}}""", "type")]
    [InlineData("""{"type":"noop.cpu"}""", "payload")]
    [InlineData("""{"type":"noop.cpu","payload":null}""", "payload")]
    [InlineData("""{"type":"noop.cpu","payload":"text"}""", "payload")]
    [InlineData("""{"type":"hash.pbkdf2","payload":{"iterations":5}}""", "payload.data")]
    [InlineData("""{"type":"hash.pbkdf2","payload":{"data":"x","iterations":1.5}}""", "payload.iterations")]
    [InlineData("""{"type":"hash.pbkdf2","payload":{"data":"x","iterations":10000001}}""", "payload.iterations")]
    [InlineData("""{"type":"hash.pbkdf2","payload":{"data":"x","iterations":"100"}}""", "payload.iterations")]
    [InlineData("""[]""", "$")]
    public void Invalid_event_is_rejected_naming_the_field(string json, string field)
    {
        var (e, errors) = Validate(json);

        Assert.Null(e);
        Assert.True(errors.ContainsKey(field), $"expected an error for '{field}', got: {string.Join(", ", errors.Keys)}");
    }

    [Fact]
    public void Oversized_pbkdf2_data_is_rejected()
    {
        var data = new string('x', EventValidator.MaxPbkdf2DataLength + 1);
        var (e, errors) = Validate("{\"type\":\"hash.pbkdf2\",\"payload\":{\"data\":\"" + data + "\",\"iterations\":1}}");

        Assert.Null(e);
        Assert.Contains("payload.data", errors.Keys);
    }

    [Fact]
    public void Test_event_is_unknown_unless_enabled()
    {
        Assert.Contains("type", Validate("""{"type":"test.fail","payload":{"lane":"cpu"}}""").Errors.Keys);
        Assert.Equal("io", Validate("""{"type":"test.fail","payload":{"lane":"io"}}""", testEvents: true).Event?.Lane);
    }

    [Fact]
    public void Test_event_needs_a_valid_lane() =>
        Assert.Contains("payload.lane", Validate("""{"type":"test.crash","payload":{"lane":"gpu"}}""", testEvents: true).Errors.Keys);

    [Fact]
    public void Errors_of_batch_items_carry_their_index()
    {
        var errors = new Dictionary<string, string[]>();
        using var document = JsonDocument.Parse("""{"type":"nope","payload":{}}""");
        new EventValidator(EventRouterTests.Router(), new DownstreamTargets(Options.Create(new DownstreamTargetOptions()))).Validate(document.RootElement, "events[3]", errors);

        Assert.Contains("events[3].type", errors.Keys);
    }

    [Theory]
    [InlineData("https://hooks.example.com/orders")]
    [InlineData("http://localhost:5183/webhook")]
    [InlineData("https://HOOKS.example.com/a?b=c")]
    public void Webhook_target_on_the_allow_list_is_carried(string target)
    {
        var (e, errors) = Validate("{\"type\":\"webhook.post\",\"target\":\"" + target + "\",\"payload\":{}}");

        Assert.Empty(errors);
        Assert.Equal(target, e?.Target);
    }

    [Theory]
    [InlineData("\"https://evil.example.net/x\"")]
    [InlineData("\"https://hooks.example.com.evil.net/x\"")]
    [InlineData("\"ftp://hooks.example.com/x\"")]
    [InlineData("\"/relative/path\"")]
    [InlineData("\"https://user:pw@hooks.example.com/x\"")]
    [InlineData("\"http://169.254.169.254/latest/meta-data\"")]
    [InlineData("\"file:///etc/passwd\"")]
    [InlineData("42")]
    public void Target_off_the_allow_list_is_rejected(string target)
    {
        var (e, errors) = Validate("{\"type\":\"webhook.post\",\"target\":" + target + ",\"payload\":{}}");

        Assert.Null(e);
        Assert.Contains("target", errors.Keys);
    }

    [Theory]
    [InlineData("http://localhost:9090/admin")] // another port of an allowed host
    [InlineData("http://localhost/webhook")] // the default port is another port too
    [InlineData("https://localhost:5183/webhook")] // same host and port, other scheme
    [InlineData("http://hooks.example.com/orders")] // https allowed, not http
    [InlineData("https://hooks.example.com:8443/orders")]
    public void Target_on_another_port_or_scheme_of_an_allowed_host_is_rejected(string target)
    {
        var (e, errors) = Validate("{\"type\":\"webhook.post\",\"target\":\"" + target + "\",\"payload\":{}}");

        Assert.Null(e);
        Assert.Contains("(scheme, host and port) is not on the allow-list", Assert.Single(errors["target"]));
    }

    [Fact]
    public void Chained_target_on_another_port_of_an_allowed_host_is_rejected() =>
        Assert.Contains("payload.then.target", Validate(
            """{"type":"hash.pbkdf2","payload":{"data":"x","iterations":1,"then":{"type":"webhook.post","payload":{},"target":"http://localhost:9090/"}}}""").Errors.Keys);

    [Fact]
    public void Target_is_refused_on_a_cpu_event() =>
        Assert.Contains("target", Validate("""{"type":"noop.cpu","target":"https://hooks.example.com/","payload":{}}""").Errors.Keys);

    [Fact]
    public void Chained_pbkdf2_with_a_known_io_type_is_valid()
    {
        var (e, errors) = Validate("""{"type":"hash.pbkdf2","payload":{"data":"x","iterations":1,"then":{"type":"webhook.post","payload":{"k":1}}}}""");

        Assert.Empty(errors);
        Assert.Equal("cpu", e?.Lane);
    }

    [Theory]
    [InlineData("""{"type":"hash.pbkdf2","payload":{"data":"x","iterations":1,"then":"webhook.post"}}""", "payload.then")]
    [InlineData("""{"type":"hash.pbkdf2","payload":{"data":"x","iterations":1,"then":{"type":"hash.pbkdf2","payload":{}}}}""", "payload.then.type")]
    [InlineData("""{"type":"hash.pbkdf2","payload":{"data":"x","iterations":1,"then":{"type":"System.IO.File","payload":{}}}}""", "payload.then.type")]
    [InlineData("""{"type":"hash.pbkdf2","payload":{"data":"x","iterations":1,"then":{"type":"webhook.post"}}}""", "payload.then.payload")]
    [InlineData("""{"type":"hash.pbkdf2","payload":{"data":"x","iterations":1,"then":{"type":"webhook.post","payload":[]}}}""", "payload.then.payload")]
    [InlineData("""{"type":"hash.pbkdf2","payload":{"data":"x","iterations":1,"then":{"type":"webhook.post","payload":{},"target":"https://evil.example.net/"}}}""", "payload.then.target")]
    public void Invalid_chain_is_rejected_naming_the_field(string json, string field) =>
        Assert.Contains(field, Validate(json).Errors.Keys);

    [Theory]
    [InlineData("""{"type":"test.fail","payload":{"lane":"cpu","failTimes":-1}}""")]
    [InlineData("""{"type":"test.fail","payload":{"lane":"cpu","failTimes":"2"}}""")]
    [InlineData("""{"type":"test.fail","payload":{"lane":"cpu","failTimes":100000}}""")]
    public void Test_fail_times_must_be_a_small_whole_number(string json) =>
        Assert.Contains("payload.failTimes", Validate(json, testEvents: true).Errors.Keys);

    [Theory]
    [InlineData("""{"id":"\ud800","type":"noop.cpu","payload":{}}""")]
    [InlineData("""{"type":"noop\udfff","payload":{}}""")]
    [InlineData("""{"type":"hash.pbkdf2","payload":{"data":"\ud800x","iterations":1}}""")]
    public void Lone_surrogate_escape_is_a_validation_error_not_a_crash(string json) =>
        Assert.NotEmpty(Validate(json).Errors);
}
