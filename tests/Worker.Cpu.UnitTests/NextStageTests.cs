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

    [Theory]
    [InlineData("""{"then":"webhook.post"}""")]
    [InlineData("""{"then":{"type":"hash.pbkdf2","payload":{}}}""")]
    [InlineData("""{"then":{"payload":{}}}""")]
    [InlineData("""{"then":{"type":"webhook.post"}}""")]
    [InlineData("""{"then":{"type":"webhook.post","payload":[1]}}""")]
    public void Malformed_then_is_a_permanent_error(string payload) =>
        Assert.Throws<PermanentEventException>(() => NextStage.Parse(payload));
}
