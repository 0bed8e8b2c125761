using System.Security.Cryptography;
using System.Text;
using EventPipeline.Producer.Apis;
using Microsoft.Extensions.Options;

namespace EventPipeline.Producer.Security;

public enum ApiKeyScope
{
    /// <summary>Submit events and read their status.</summary>
    Submit,

    /// <summary>Everything, including dead-letter operations.</summary>
    Admin,
}

public sealed class ApiKeyOptions
{
    public const string HeaderName = "X-Api-Key";

    public string Submit { get; set; } = "";

    public string Admin { get; set; } = "";
}

/// <summary>
/// Checks <c>X-Api-Key</c>: missing or unknown → 401, a submit key on an admin endpoint → 403. Keys are compared in
/// constant time and never logged.
/// </summary>
public sealed class ApiKeyFilter(ApiKeyScope required, IOptions<ApiKeyOptions> options) : IEndpointFilter
{
    // The configured keys' hashes, computed once: a request hashes only the key it presents (one SHA-256, not four).
    private readonly Lazy<(byte[]? Admin, byte[]? Submit)> _configured = new(() =>
        (HashOf(options.Value.Admin), HashOf(options.Value.Submit)));

    /// <summary>HttpContext item holding the caller's scope name, so per-client state (idempotency keys) stays per scope.</summary>
    public const string ScopeItem = "EventPipeline.ApiKeyScope";

    public ValueTask<object?> InvokeAsync(EndpointFilterInvocationContext context, EndpointFilterDelegate next)
    {
        var presented = HashOf(context.HttpContext.Request.Headers[ApiKeyOptions.HeaderName].ToString());
        var (admin, submit) = _configured.Value;
        // Both comparisons always run, so the time taken does not tell which key (if any) matched.
        var isAdmin = Matches(presented, admin);
        var isSubmit = Matches(presented, submit) | isAdmin;

        if (!isSubmit)
        {
            return ValueTask.FromResult<object?>(Problems.Problem(StatusCodes.Status401Unauthorized, Problems.Unauthorized,
                "A valid API key is required", $"Send it in the {ApiKeyOptions.HeaderName} header."));
        }

        if (required == ApiKeyScope.Admin && !isAdmin)
        {
            return ValueTask.FromResult<object?>(Problems.Problem(StatusCodes.Status403Forbidden, Problems.Forbidden,
                "This key may not do that", "Dead-letter operations need the admin key."));
        }

        context.HttpContext.Items[ScopeItem] = isAdmin ? nameof(ApiKeyScope.Admin) : nameof(ApiKeyScope.Submit);
        return next(context);
    }

    /// <summary>Null for an empty key: an empty key is never configured and never matches.</summary>
    private static byte[]? HashOf(string key) => key.Length > 0 ? SHA256.HashData(Encoding.UTF8.GetBytes(key)) : null;

    private static bool Matches(byte[]? presented, byte[]? configured) =>
        presented is not null && configured is not null && CryptographicOperations.FixedTimeEquals(presented, configured);
}

public static class ApiKeyEndpointExtensions
{
    public static TBuilder RequireApiKey<TBuilder>(this TBuilder builder, ApiKeyScope scope) where TBuilder : IEndpointConventionBuilder =>
        builder.AddEndpointFilterFactory((factory, next) =>
        {
            var filter = new ApiKeyFilter(scope, factory.ApplicationServices.GetRequiredService<IOptions<ApiKeyOptions>>());
            return context => filter.InvokeAsync(context, next);
        });
}
