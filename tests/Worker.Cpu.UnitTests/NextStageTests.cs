using System.Text.Json;
using EventPipeline.Worker.Cpu.Forward;
using EventPipeline.Worker.Cpu.Work;

namespace EventPipeline.Worker.Cpu.UnitTests;

public sealed class NextStageTests
{
    [Fact]
    public void Payload_without_then_has_no_next_stage() =>
        Assert.Null(NextStage.Parse("""{"data":"x","iterations":1}"""));

    [Fact]
    public void Then_forwards_its_payload_with_the_source_result_added()
    {
        var next = NextStage.Parse("""{"data":"x","iterations":1,"then":{"type":"webhook.post","payload":{"order":42}}}""");

        Assert.NotNull(next);
        Assert.Equal("webhook.post", next.Type);
        var body = JsonDocument.Parse(next.BodyWith("e1", "hash.pbkdf2", "abcd")).RootElement;
        Assert.Equal(42, body.GetProperty("order").GetInt32());
        Assert.Equal("e1", body.GetProperty("source").GetProperty("id").GetString());
        Assert.Equal("abcd", body.GetProperty("source").GetProperty("result").GetString());
        Assert.Equal("e1.then", NextStage.DerivedId("e1"));
    }

    [Fact]
    public void Then_is_found_however_its_name_is_escaped_and_only_at_the_top_level()
    {
        // The payload is scanned for a top-level "then" before any tree is built: the scan must read names as JSON does.
        Assert.Equal("webhook.post", NextStage.Parse("""{"data":"x","\u0074hen":{"type":"webhook.post","payload":{}}}""")?.Type);
        Assert.Equal("noop.io", NextStage.Parse("""{"data":{"a":[1,{"then":2}]},"then":{"type":"noop.io","payload":{}}}""")?.Type);
        Assert.Null(NextStage.Parse("""{"data":{"then":{"type":"webhook.post","payload":{}}},"thence":1}"""));
        Assert.Null(NextStage.Parse("""[{"then":{"type":"webhook.post","payload":{}}}]"""));
    }

    [Theory]
    [InlineData("""{"then":"webhook.post"}""")]
    [InlineData("""{"then":{"type":"hash.pbkdf2","payload":{}}}""")]
    [InlineData("""{"then":{"payload":{}}}""")]
    [InlineData("""{"then":{"type":"webhook.post"}}""")]
    [InlineData("""{"then":{"type":"webhook.post","payload":[1]}}""")]
    public void Malformed_then_is_a_permanent_error(string payload) =>
        Assert.Throws<PermanentEventException>(() => NextStage.Parse(payload));

    [Fact]
    public void A_repeated_property_name_reads_as_the_API_validated_it_the_last_one_counts()
    {
        // The API accepts a payload whose names repeat and validates its then as JsonElement reads it: the last one.
        // The worker must forward what was validated, not fail the event (an ArgumentException before: retried to a
        // dead letter) for a repetition anywhere in the payload (review of session 8, F4).
        Assert.Null(NextStage.Parse("""{"k":1,"k":2}"""));
        Assert.Equal("noop.io", NextStage.Parse("""{"k":1,"k":2,"then":{"type":"noop.io","payload":{}}}""")?.Type);
        Assert.Equal("noop.io", NextStage.Parse("""{"then":{"type":"hash.pbkdf2","payload":{}},"then":{"type":"noop.io","payload":{}}}""")?.Type);
        Assert.Throws<PermanentEventException>(() => NextStage.Parse("""{"then":{"type":"noop.io","payload":{}},"then":1}"""));

        var next = NextStage.Parse("""{"then":{"type":"webhook.post","type":"noop.io","payload":{"a":1,"a":2,"b":{"c":1,"c":2}}}}""");
        Assert.NotNull(next);
        Assert.Equal("noop.io", next.Type);
        var body = JsonDocument.Parse(next.BodyWith("e1", "hash.pbkdf2", "abcd")).RootElement;
        Assert.Equal(2, body.GetProperty("a").GetInt32());
        Assert.Equal(["a", "b", "source"], body.EnumerateObject().Select(p => p.Name));
        Assert.Equal(2, body.GetProperty("b").GetProperty("c").GetInt32());
    }

    [Theory]
    [InlineData("""{"then":{"type":"noop.io","payload":{"\ud800":1}}}""")]
    [InlineData("""{"then":{"type":"\ud800","payload":{}}}""")]
    [InlineData("""{"then":{"type":"noop.io","payload":{},"target":"http://h/\udc00"}}""")]
    public void Unreadable_text_in_then_is_a_permanent_error_not_a_retried_one(string payload) =>
        // JSON may escape a lone surrogate; .NET cannot read it as a string. No retry makes it readable, so the event
        // fails for good (dead-lettered at once) instead of being retried as a transient error until its delivery limit.
        Assert.Throws<PermanentEventException>(() => NextStage.Parse(payload));

    [Fact]
    public void A_name_dotnet_cannot_read_before_then_neither_hides_then_nor_fails_as_a_transient_error()
    {
        // The scan for a top-level "then" compares each name before it, and comparing an escaped lone surrogate throws
        // InvalidOperationException: the event was retried as transient up to its delivery limit. The API (JsonElement,
        // looking names up from the end) accepts this payload, so the worker must read "then" as the API did.
        var stage = NextStage.Parse("""{"\ud800":1,"data":"x","iterations":1,"then":{"type":"noop.io","payload":{"n":1}}}""");
        Assert.NotNull(stage);
        Assert.Equal("noop.io", stage.Type);
    }

    [Fact]
    public void An_invalid_operation_on_a_payload_without_unreadable_text_is_not_reported_as_unreadable_text()
    {
        // The catch is for text .NET cannot read (an escaped lone surrogate). Any other InvalidOperationException is a
        // defect: reported as "not valid Unicode" and dead-lettered at once, it hid the defect behind a wrong reason.
        var defect = new InvalidOperationException("a defect while reading then");

        var thrown = Record.Exception(() => NextStage.Parse("""{"then":{"type":"noop.io","payload":{}}}""", _ => throw defect));

        Assert.True(ReferenceEquals(thrown, defect),
            $"an unexpected InvalidOperationException came out of NextStage.Parse as {thrown?.GetType().Name}: {thrown?.Message}");

        // Readable text with escapes: "\\ud800" is a backslash and the letters "ud800"; "\ud83d\ude00" is a whole pair.
        foreach (var readable in new[] { """{"note":"\\ud800","then":{"type":"noop.io","payload":{}}}""", """{"note":"\ud83d\ude00","then":{"type":"noop.io","payload":{}}}""" })
        {
            thrown = Record.Exception(() => NextStage.Parse(readable, _ => throw defect));
            Assert.True(ReferenceEquals(thrown, defect),
                $"an unexpected InvalidOperationException on {readable} came out as {thrown?.GetType().Name}: {thrown?.Message}");
        }
    }
}

