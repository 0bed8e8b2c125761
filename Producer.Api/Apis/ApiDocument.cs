using System.Text.Json.Nodes;
using EventPipeline.Producer.Security;
using Microsoft.AspNetCore.OpenApi;
using Microsoft.OpenApi;
using Scalar.AspNetCore;

namespace EventPipeline.Producer.Apis;

/// <summary>
/// The OpenAPI document (<c>/openapi/v1.json</c>, every environment: it holds no secrets) with the API-key scheme and
/// an example for every request and success answer; the Scalar reference page (<c>/scalar</c>) in Development only.
/// </summary>
public static class ApiDocument
{
    public static IServiceCollection AddApiDocument(this IServiceCollection services) =>
        services.AddOpenApi(options =>
        {
            options.AddDocumentTransformer((document, _, _) =>
            {
                document.Info = new OpenApiInfo
                {
                    Title = "EventPipeline Producer API",
                    Version = "v1",
                    Description = "Submit events to the CPU lane (Redis Streams) or the I/O lane (RabbitMQ), follow their status, watch the lanes " +
                                  "and manage dead letters. Every error is an RFC 9457 problem with a stable `type`. " +
                                  $"Authenticate with the `{Security.ApiKeyOptions.HeaderName}` header: the submit key for events and lanes, the admin key for everything.",
                };
                document.Components ??= new OpenApiComponents();
                document.Components.SecuritySchemes ??= new Dictionary<string, IOpenApiSecurityScheme>();
                document.Components.SecuritySchemes[SchemeId] = new OpenApiSecurityScheme
                {
                    Type = SecuritySchemeType.ApiKey,
                    In = ParameterLocation.Header,
                    Name = Security.ApiKeyOptions.HeaderName,
                    Description = "Submit key (scope submit) or admin key (scope admin).",
                };
                return Task.CompletedTask;
            });
            options.AddOperationTransformer((operation, context, _) =>
            {
                var path = context.Description.RelativePath ?? "";
                if (!path.StartsWith("health", StringComparison.Ordinal) && !path.StartsWith("metrics", StringComparison.Ordinal))
                {
                    operation.Security ??= [];
                    operation.Security.Add(new OpenApiSecurityRequirement { [new OpenApiSecuritySchemeReference(SchemeId, context.Document)] = [] });
                }

                if (operation.OperationId is { } id && Examples.TryGetValue(id, out var example))
                {
                    if (example.Request is not null && operation.RequestBody?.Content is { } requestContent)
                    {
                        foreach (var media in requestContent.Values)
                        {
                            media.Example = JsonNode.Parse(example.Request);
                        }
                    }

                    if (example.Response is not null && operation.Responses is { } responses)
                    {
                        foreach (var (status, response) in responses)
                        {
                            if (status.StartsWith('2') && response.Content is { } content)
                            {
                                foreach (var media in content.Values)
                                {
                                    media.Example = JsonNode.Parse(example.Response);
                                }
                            }
                        }
                    }
                }

                if (operation.OperationId is "SubmitEvent" or "SubmitEventBatch")
                {
                    operation.Parameters ??= [];
                    operation.Parameters.Add(new OpenApiParameter
                    {
                        Name = "Idempotency-Key",
                        In = ParameterLocation.Header,
                        Required = false,
                        Description = "Makes a retry safe: a repeat with the same key (and body) within the retention window answers 200 with the " +
                                      "original ids and states and enqueues nothing. 1–255 visible ASCII characters.",
                        Schema = new OpenApiSchema { Type = JsonSchemaType.String, MaxLength = 255 },
                    });
                }

                return Task.CompletedTask;
            });
        });

    public static WebApplication MapApiDocument(this WebApplication app)
    {
        app.MapOpenApi();
        if (app.Environment.IsDevelopment())
        {
            app.MapScalarApiReference(options => options
                .WithTitle("EventPipeline Producer API")
                .AddPreferredSecuritySchemes(SchemeId)
                .AddApiKeyAuthentication(SchemeId, key => key.Value = ""));
        }

        return app;
    }

    private const string SchemeId = "ApiKey";

    private sealed record Example(string? Request, string? Response);

    private static readonly Dictionary<string, Example> Examples = new(StringComparer.Ordinal)
    {
        ["SubmitEvent"] = new(
            """{"id":"order-1042","type":"hash.pbkdf2","payload":{"data":"correct horse","iterations":100000,"then":{"type":"webhook.post","payload":{"order":1042}}}}""",
            """{"id":"order-1042","lane":"cpu","state":"accepted"}"""),
        ["SubmitEventBatch"] = new(
            """{"events":[{"type":"hash.pbkdf2","payload":{"data":"a","iterations":1000}},{"type":"webhook.post","target":"https://hooks.example.com/orders","payload":{"order":7}}]}""",
            """{"events":[{"id":"0193f0c2a1b27c3e9d4f5a6b7c8d9e0f","lane":"cpu","state":"accepted"},{"id":"0193f0c2a1b27c3e9d4f5a6b7c8d9e10","lane":"io","state":"accepted"}]}"""),
        ["GetEvent"] = new(null,
            """{"id":"order-1042","type":"hash.pbkdf2","lane":"cpu","state":"succeeded","attempts":1,"error":null,"result":"5f1d…","acceptedAt":"2026-11-25T10:00:00+00:00","startedAt":"2026-11-25T10:00:00.020+00:00","finishedAt":"2026-11-25T10:00:00.210+00:00","replays":0,"replayedAt":null}"""),
        ["GetLanes"] = new(null,
            """{"lanes":[{"name":"cpu","depth":12,"lag":4,"pending":8,"oldestPendingAgeMs":950,"deadLetters":1,"consumers":1},{"name":"io","depth":3,"lag":0,"pending":3,"oldestPendingAgeMs":null,"deadLetters":0,"consumers":1}]}"""),
        ["ListDeadLetters"] = new(null,
            """{"lane":"cpu","total":1,"items":[{"id":"order-1042","lane":"cpu","type":"hash.pbkdf2","attempts":5,"reason":"failed","errorType":"System.InvalidOperationException","errorMessage":"boom","deadAt":"2026-11-25T10:01:00+00:00"}],"next":null}"""),
        ["GetDeadLetter"] = new(null,
            """{"id":"order-1042","lane":"cpu","type":"hash.pbkdf2","payload":{"data":"correct horse","iterations":100000},"acceptedAt":"2026-11-25T10:00:00+00:00","deadAt":"2026-11-25T10:01:00+00:00","attempts":5,"reason":"failed","error":{"type":"System.InvalidOperationException","message":"boom","stackTrace":"at …"},"errors":[{"attempt":1,"type":"System.InvalidOperationException","message":"boom","at":"2026-11-25T10:00:01+00:00"}]}"""),
        ["ReplayDeadLetter"] = new(null, """{"id":"order-1042","lane":"cpu","state":"accepted"}"""),
        ["ReplayAllDeadLetters"] = new(null, """{"lane":"io","replayed":12,"alreadySucceeded":1,"remaining":0}"""),
        ["DeleteAllDeadLetters"] = new(null, """{"lane":"io","deleted":12,"remaining":0}"""),
    };
}
