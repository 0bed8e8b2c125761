using System.Text.Json;
using EventPipeline.Producer.Validation;

namespace EventPipeline.Producer.UnitTests;

public sealed class EventValidatorTests
{
    private static (ValidatedEvent? Event, Dictionary<string, string[]> Errors) Validate(string json, bool testEvents = false)
    {
        var errors = new Dictionary<string, string[]>();
        using var document = JsonDocument.Parse(json);
        var result = new EventValidator(EventRouterTests.Router(testEvents)).Validate(document.RootElement, "", errors);
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
        new EventValidator(EventRouterTests.Router()).Validate(document.RootElement, "events[3]", errors);

        Assert.Contains("events[3].type", errors.Keys);
    }
}
