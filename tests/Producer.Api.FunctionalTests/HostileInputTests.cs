using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;

namespace EventPipeline.Producer.FunctionalTests;

/// <summary>
/// At least a thousand generated hostile requests against the real API: every answer is a 4xx ProblemDetails (never a
/// 5xx, never a hang) and neither broker gains anything.
/// </summary>
[Collection(ApiOnlyCollection.Name)]
public sealed class HostileInputTests(ApiOnlyFixture fixture)
{
    private const int MaxEventBytes = 256 * 1024;

    [Fact]
    public async Task Thousand_hostile_bodies_get_4xx_problem_details_and_reach_no_broker()
    {
        var host = fixture.Host;
        var before = await host.ContentsAsync();
        var cases = HostileCases(new Random(20261125)).ToList();
        Assert.True(cases.Count >= 1000, $"only {cases.Count} cases generated");

        var failures = new System.Collections.Concurrent.ConcurrentBag<string>();
        await Parallel.ForEachAsync(cases, new ParallelOptions { MaxDegreeOfParallelism = 8 }, async (c, ct) =>
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, c.Path) { Content = c.Content() };
            // As a well-behaved client does with a big body: the server can refuse it (413) before it is sent, instead
            // of closing the connection under a client that is still writing.
            request.Headers.ExpectContinue = request.Content.Headers.ContentLength > 64 * 1024;
            foreach (var (name, value) in c.Headers)
            {
                request.Headers.TryAddWithoutValidation(name, value);
            }

            using var response = await host.Submit.SendAsync(request, ct);
            var status = (int)response.StatusCode;
            var body = await response.Content.ReadAsStringAsync(ct);
            if (status is < 400 or >= 500)
            {
                failures.Add($"{c.Name}: {status} {Truncate(body)}");
                return;
            }

            if (response.Content.Headers.ContentType?.MediaType != "application/problem+json")
            {
                failures.Add($"{c.Name}: {status} with content type {response.Content.Headers.ContentType}");
                return;
            }

            using var problem = JsonDocument.Parse(body);
            if (!problem.RootElement.TryGetProperty("type", out var type) || !type.GetString()!.StartsWith("https://eventpipeline.dev/problems/", StringComparison.Ordinal)
                || problem.RootElement.GetProperty("status").GetInt32() != status)
            {
                failures.Add($"{c.Name}: problem without a stable type or matching status: {Truncate(body)}");
            }
        });

        Assert.True(failures.IsEmpty, $"{failures.Count} of {cases.Count} answers were wrong:\n{string.Join('\n', failures.Take(20))}");
        Assert.Equal(before, await host.ContentsAsync());
    }

    [Fact]
    public async Task Body_over_the_limit_without_content_length_gets_413()
    {
        // Chunked: the size is only known while reading, so the limit must hold while streaming too.
        var content = new StreamContent(new MemoryStream(Encoding.UTF8.GetBytes("{\"type\":\"noop.cpu\",\"payload\":{\"x\":\"" + new string('a', MaxEventBytes) + "\"}}")));
        content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        using var request = new HttpRequestMessage(HttpMethod.Post, "/events") { Content = content };
        request.Headers.TransferEncodingChunked = true;

        using var response = await fixture.Host.Submit.SendAsync(request);

        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, response.StatusCode);
        Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
    }

    private sealed record HostileCase(string Name, string Path, Func<HttpContent> Content, (string Name, string Value)[] Headers);

    private static HostileCase Json(string name, string body, string path = "/events", string contentType = "application/json", params (string, string)[] headers) =>
        new(name, path, () =>
        {
            var content = new ByteArrayContent(Encoding.UTF8.GetBytes(body));
            content.Headers.TryAddWithoutValidation("Content-Type", contentType); // malformed types are part of the test
            return content;
        }, headers);

    private static HostileCase Bytes(string name, byte[] body, string path = "/events") =>
        new(name, path, () => new ByteArrayContent(body) { Headers = { { "Content-Type", "application/json" } } }, []);

    private static IEnumerable<HostileCase> HostileCases(Random random)
    {
        string[] paths = ["/events", "/events/batch"];
        var valid = """{"type":"noop.cpu","payload":{}}""";

        // Fixed shapes: wrong types, wrong structure, unknown or disabled things.
        string[] shapes =
        [
            "", " ", "null", "true", "0", "-1e309", "\"text\"", "[]", "{}", "[{}]", "{\"events\":null}", "{\"events\":{}}", "{\"events\":[]}",
            "{\"type\":null,\"payload\":{}}", "{\"type\":\"\",\"payload\":{}}", "{\"type\":[\"noop.cpu\"],\"payload\":{}}",
            "{\"type\":\"noop.cpu\",\"payload\":\"{}\"}", "{\"type\":\"noop.cpu\",\"payload\":[]}", "{\"type\":\"noop.cpu\",\"payload\":1}",
            "{\"type\":\"System.Diagnostics.Process\",\"payload\":{}}", "{\"type\":\"../../etc/passwd\",\"payload\":{}}",
            "{\"type\":\"hash.pbkdf2\",\"payload\":{\"data\":\"x\",\"iterations\":2147483648}}",
            "{\"type\":\"hash.pbkdf2\",\"payload\":{\"data\":\"x\",\"iterations\":1e3}}",
            "{\"type\":\"hash.pbkdf2\",\"payload\":{\"data\":null,\"iterations\":1}}",
            "{\"type\":\"hash.pbkdf2\",\"payload\":{\"data\":\"x\",\"iterations\":1,\"then\":{\"type\":\"test.crash\",\"payload\":{}}}}",
            "{\"type\":\"hash.pbkdf2\",\"payload\":{\"data\":\"x\",\"iterations\":1,\"then\":{\"type\":\"webhook.post\",\"payload\":{},\"target\":\"http://10.0.0.1/\"}}}",
            "{\"type\":\"webhook.post\",\"target\":\"http://127.0.0.2/\",\"payload\":{}}",
            "{\"type\":\"webhook.post\",\"target\":\"javascript:alert(1)\",\"payload\":{}}",
            "{\"type\":\"webhook.post\",\"target\":\"http://user@127.0.0.1/\",\"payload\":{}}",
            "{\"type\":\"test.fail\",\"payload\":{\"lane\":\"gpu\"}}", "{\"type\":\"test.crash\",\"payload\":{}}",
            "{\"id\":\"a b\",\"type\":\"noop.cpu\",\"payload\":{}}", "{\"id\":\"../x\",\"type\":\"noop.cpu\",\"payload\":{}}",
            "{\"id\":\"" + new string('i', 129) + "\",\"type\":\"noop.cpu\",\"payload\":{}}", "{\"id\":\"\u00e9t\u00e9\",\"type\":\"noop.cpu\",\"payload\":{}}",
            "{\"id\":\"\\ud800\",\"type\":\"noop.cpu\",\"payload\":{}}", "{\"type\":\"noop\\udc00\",\"payload\":{}}",
            "{\"type\":\"noop.cpu\",\"payload\":{}} trailing", "{\"type\":\"noop.cpu\",\"payload\":{},}", "{'type':'noop.cpu','payload':{}}",
            "{\"type\":\"noop.cpu\",/*c*/\"payload\":{}}", "{\"type\":\"noop.cpu\",\"payload\":NaN}", "{\"type\":\"noop.cpu\",\"payload\":{\"a\":Infinity}}",
            "\uFEFF{\"type\":\"nope\",\"payload\":{}}",
            "{\"events\":[" + valid + ",{\"type\":\"nope\",\"payload\":{}}]}",
            "{\"events\":[{\"id\":\"dup\",\"type\":\"noop.cpu\",\"payload\":{}},{\"id\":\"dup\",\"type\":\"noop.io\",\"payload\":{}}]}",
            "{\"events\":[" + string.Join(',', Enumerable.Repeat(valid, 1001)) + "]}",
            "{\"events\":[" + string.Join(',', Enumerable.Repeat(valid, 999)) + ",{\"type\":\"noop.io\",\"payload\":null}]}",
        ];
        foreach (var path in paths)
        {
            for (var i = 0; i < shapes.Length; i++)
            {
                yield return Json($"shape {i} {path}", shapes[i], path);
            }
        }

        // Wrong or missing content types.
        string[] contentTypes = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml", "application/octet-stream", "json", "application/jsonx"];
        foreach (var path in paths)
        {
            foreach (var type in contentTypes)
            {
                yield return Json($"content type {type} {path}", valid, path, type);
            }

            yield return new HostileCase($"no content type {path}", path, () => new ByteArrayContent(Encoding.UTF8.GetBytes(valid)), []);
        }

        // Bad Idempotency-Key headers.
        yield return Json("idempotency key too long", valid, headers: ("Idempotency-Key", new string('k', 256)));
        yield return Json("idempotency key with spaces", valid, headers: ("Idempotency-Key", "a key"));

        // Deep nesting: past the parser's depth limit, in every position.
        foreach (var depth in new[] { 65, 100, 1000, 10_000 })
        {
            yield return Json($"deep arrays {depth}", "{\"type\":\"noop.cpu\",\"payload\":{\"a\":" + new string('[', depth) + new string(']', depth) + "}}");
            yield return Json($"deep objects {depth}", "{\"type\":\"noop.cpu\",\"payload\":" + string.Concat(Enumerable.Repeat("{\"a\":", depth)) + "1" + new string('}', depth) + "}");
            yield return Json($"deep root {depth}", new string('[', depth) + new string(']', depth), "/events/batch");
        }

        // Huge strings and bodies over the limits (413) or fields over their limits (400).
        yield return Json("event over 256 KiB", "{\"type\":\"noop.cpu\",\"payload\":{\"x\":\"" + new string('x', MaxEventBytes) + "\"}}");
        yield return Json("pbkdf2 data over limit", "{\"type\":\"hash.pbkdf2\",\"payload\":{\"data\":\"" + new string('d', 70_000) + "\",\"iterations\":1}}");
        yield return Json("huge type", "{\"type\":\"" + new string('t', 200_000) + "\",\"payload\":{}}");
        yield return Json("batch over 4 MiB", "{\"events\":[{\"type\":\"noop.cpu\",\"payload\":{\"x\":\"" + new string('x', 4 * 1024 * 1024) + "\"}}]}", "/events/batch");

        // Bad UTF-8 in every position of a valid event, and random garbage.
        var template = Encoding.UTF8.GetBytes("{\"type\":\"hash.pbkdf2\",\"payload\":{\"data\":\"abcdef\",\"iterations\":1000}}");
        byte[][] badSequences = [[0xFF], [0xC0, 0xAF], [0xED, 0xA0, 0x80], [0xF8, 0x88, 0x80, 0x80, 0x80], [0xC3], [0xE2, 0x82]];
        foreach (var bad in badSequences)
        {
            foreach (var at in new[] { 9, 12, 38, 41 })
            {
                var body = template.Take(at).Concat(bad).Concat(template.Skip(at)).ToArray();
                yield return Bytes($"bad utf-8 {Convert.ToHexString(bad)} at {at}", body);
            }
        }

        // Random mutations of a valid event: flipped bytes, truncations, injected control characters.
        var count = 0;
        while (count < 900)
        {
            var body = (byte[])template.Clone();
            switch (count % 4)
            {
                case 0:
                    body = body.Take(random.Next(1, body.Length - 1)).ToArray(); // truncated
                    break;
                case 1:
                    body[random.Next(body.Length)] = (byte)random.Next(0x80, 0x100); // invalid UTF-8 byte
                    break;
                case 2:
                    body[random.Next(1, body.Length - 1)] = (byte)random.Next(0, 0x20); // raw control character
                    break;
                default:
                    var garbage = new byte[random.Next(1, 2048)];
                    random.NextBytes(garbage);
                    garbage[0] = (byte)"{[\"0tfn-x"[random.Next(9)];
                    body = garbage;
                    break;
            }

            // A mutation can land somewhere harmless (e.g. inside "abcdef"): keep only bodies that are really broken.
            if (IsValidJson(body))
            {
                continue;
            }

            count++;
            yield return Bytes($"mutation {count}", body, paths[count % 2]);
        }
    }

    private static bool IsValidJson(byte[] body)
    {
        try
        {
            using var _ = JsonDocument.Parse(body);
            return true;
        }
        catch (JsonException)
        {
            return false;
        }
    }

    private static string Truncate(string text) => text.Length <= 300 ? text : text[..300] + "…";
}
