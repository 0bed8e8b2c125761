using System.Net;
using System.Text;

namespace EventPipeline.Producer.FunctionalTests;

/// <summary>Every endpoint × {no key, wrong key, submit key, admin key} → the documented status.</summary>
[Collection(ApiOnlyCollection.Name)]
public sealed class AuthorizationTests(ApiOnlyFixture fixture)
{
    private const string Event = """{"type":"noop.cpu","payload":{}}""";

    public enum Caller { None, Wrong, Submit, Admin }

    /// <summary>Endpoint, caller, expected status. Unknown ids answer 404 once the caller is allowed in.</summary>
    public static TheoryData<string, string, Caller, int> Matrix()
    {
        var data = new TheoryData<string, string, Caller, int>();
        (string Method, string Path, bool Admin, int Allowed)[] endpoints =
        [
            ("POST", "/events", false, 202),
            ("POST", "/events/batch", false, 202),
            ("GET", "/events/no-such-event", false, 404),
            ("GET", "/lanes", false, 200),
            ("GET", "/dead-letters/cpu", true, 200),
            ("GET", "/dead-letters/io", true, 200),
            ("GET", "/dead-letters/cpu/no-such-event", true, 404),
            ("GET", "/dead-letters/io/no-such-event", true, 404),
            ("POST", "/dead-letters/cpu/no-such-event/replay", true, 404),
            ("POST", "/dead-letters/io/no-such-event/replay", true, 404),
            ("POST", "/dead-letters/cpu/replay", true, 200),
            ("POST", "/dead-letters/io/replay", true, 200),
            ("DELETE", "/dead-letters/cpu/no-such-event", true, 404),
            ("DELETE", "/dead-letters/io/no-such-event", true, 404),
            ("GET", "/dead-letters/gpu", true, 404),
        ];
        foreach (var (method, path, admin, allowed) in endpoints)
        {
            data.Add(method, path, Caller.None, 401);
            data.Add(method, path, Caller.Wrong, 401);
            data.Add(method, path, Caller.Submit, admin ? 403 : allowed);
            data.Add(method, path, Caller.Admin, allowed);
        }

        // Open to anyone: probes, metrics and the API description hold no event data.
        foreach (var caller in Enum.GetValues<Caller>())
        {
            data.Add("GET", "/health/ready", caller, 200);
            data.Add("GET", "/health/live", caller, 200);
            data.Add("GET", "/openapi/v1.json", caller, 200);
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Matrix))]
    public async Task Endpoint_answers_the_documented_status_for_each_key(string method, string path, Caller caller, int expected)
    {
        using var client = fixture.Host.Client(caller switch
        {
            Caller.Submit => PipelineHost.SubmitKey,
            Caller.Admin => PipelineHost.AdminKey,
            Caller.Wrong => PipelineHost.AdminKey[..^1] + "X",
            _ => null,
        });
        using var request = new HttpRequestMessage(new HttpMethod(method), path);
        if (method == "POST" && path.StartsWith("/events", StringComparison.Ordinal))
        {
            var body = path.EndsWith("/batch", StringComparison.Ordinal) ? $$"""{"events":[{{Event}}]}""" : Event;
            request.Content = new StringContent(body, Encoding.UTF8, "application/json");
        }

        using var response = await client.SendAsync(request);

        Assert.Equal(expected, (int)response.StatusCode);
        if (expected >= 400)
        {
            Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
        }
    }

    [Fact]
    public async Task A_key_too_long_for_the_stack_buffer_is_refused_and_the_submit_key_still_accepted_after_it()
    {
        // The presented key is hashed from a stack buffer up to 512 bytes, from a pooled array beyond: a long key (here
        // 4,000 bytes, the submit key as its prefix) must be compared like any other, and leave nothing behind that
        // changes the next check.
        using var longKey = fixture.Host.Client(PipelineHost.SubmitKey + new string('k', 4000 - PipelineHost.SubmitKey.Length));
        using var refused = await longKey.PostAsync("/events", new StringContent(Event, Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.Unauthorized, refused.StatusCode);
        Assert.Equal(HttpStatusCode.Accepted, (await fixture.Host.Submit.PostAsync("/events", new StringContent(Event, Encoding.UTF8, "application/json"))).StatusCode);
    }

    [Fact]
    public async Task Rejected_key_is_never_written_to_the_logs()
    {
        var secret = "leak-check-" + Guid.NewGuid().ToString("N");
        using var client = fixture.Host.Client(secret);
        Assert.Equal(HttpStatusCode.Unauthorized, (await client.GetAsync("/lanes")).StatusCode);
        Assert.Equal(HttpStatusCode.Accepted, (await fixture.Host.Submit.PostAsync("/events", new StringContent(Event, Encoding.UTF8, "application/json"))).StatusCode);

        Assert.DoesNotContain(secret, fixture.Host.Api.OutputText);
        Assert.DoesNotContain(PipelineHost.SubmitKey, fixture.Host.Api.OutputText);
        Assert.DoesNotContain(PipelineHost.AdminKey, fixture.Host.Api.OutputText);
    }
}
