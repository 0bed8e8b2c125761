using System.Text;

namespace EventPipeline.Observability.Tests;

/// <summary>A span as the services exported it over OTLP.</summary>
public sealed record ReceivedSpan(
    string Service, string Scope, string TraceId, string SpanId, string ParentSpanId, string Name, int Kind,
    IReadOnlyDictionary<string, string> Attributes, string TraceState = "")
{
    public const int Server = 2, Client = 3, Producer = 4, Consumer = 5;

    public string? Attribute(string key) => Attributes.TryGetValue(key, out var value) ? value : null;

    public override string ToString() => $"{Service}: {Name} (kind {Kind}, span {SpanId}, parent {ParentSpanId})";
}

/// <summary>A log record as the services exported it over OTLP.</summary>
public sealed record ReceivedLog(string Service, string Body, string TraceId, string SpanId, IReadOnlyDictionary<string, string> Attributes);

/// <summary>
/// Reads the few OTLP protobuf fields the tests look at (opentelemetry-proto trace/v1 and logs/v1) straight from the
/// wire format, so the receiver needs no generated code.
/// </summary>
public static class OtlpProtobuf
{
    public static IEnumerable<ReceivedSpan> ReadSpans(ReadOnlyMemory<byte> request)
    {
        foreach (var resourceSpans in Fields(request).Where(f => f.Number == 1))
        {
            var service = "";
            var scopes = new List<ReadOnlyMemory<byte>>();
            foreach (var field in Fields(resourceSpans.Bytes))
            {
                if (field.Number == 1)
                {
                    service = ServiceName(field.Bytes);
                }
                else if (field.Number == 2)
                {
                    scopes.Add(field.Bytes);
                }
            }

            foreach (var scopeSpans in scopes)
            {
                var scope = "";
                foreach (var field in Fields(scopeSpans))
                {
                    if (field.Number == 1)
                    {
                        scope = Fields(field.Bytes).Where(f => f.Number == 1).Select(f => Text(f.Bytes)).FirstOrDefault() ?? "";
                    }
                    else if (field.Number == 2)
                    {
                        yield return ReadSpan(service, scope, field.Bytes);
                    }
                }
            }
        }
    }

    public static IEnumerable<ReceivedLog> ReadLogs(ReadOnlyMemory<byte> request)
    {
        foreach (var resourceLogs in Fields(request).Where(f => f.Number == 1))
        {
            var service = "";
            var scopes = new List<ReadOnlyMemory<byte>>();
            foreach (var field in Fields(resourceLogs.Bytes))
            {
                if (field.Number == 1)
                {
                    service = ServiceName(field.Bytes);
                }
                else if (field.Number == 2)
                {
                    scopes.Add(field.Bytes);
                }
            }

            foreach (var record in scopes.SelectMany(s => Fields(s)).Where(f => f.Number == 2))
            {
                string body = "", traceId = "", spanId = "";
                var attributes = new Dictionary<string, string>();
                foreach (var field in Fields(record.Bytes))
                {
                    switch (field.Number)
                    {
                        case 5: body = AnyValue(field.Bytes); break;
                        case 6: AddKeyValue(attributes, field.Bytes); break;
                        case 9: traceId = Convert.ToHexStringLower(field.Bytes.Span); break;
                        case 10: spanId = Convert.ToHexStringLower(field.Bytes.Span); break;
                    }
                }

                yield return new ReceivedLog(service, body, traceId, spanId, attributes);
            }
        }
    }

    private static ReceivedSpan ReadSpan(string service, string scope, ReadOnlyMemory<byte> span)
    {
        string traceId = "", spanId = "", traceState = "", parent = "", name = "";
        var kind = 0;
        var attributes = new Dictionary<string, string>();
        foreach (var field in Fields(span))
        {
            switch (field.Number)
            {
                case 1: traceId = Convert.ToHexStringLower(field.Bytes.Span); break;
                case 2: spanId = Convert.ToHexStringLower(field.Bytes.Span); break;
                case 3: traceState = Text(field.Bytes); break;
                case 4: parent = Convert.ToHexStringLower(field.Bytes.Span); break;
                case 5: name = Text(field.Bytes); break;
                case 6: kind = (int)field.Varint; break;
                case 9: AddKeyValue(attributes, field.Bytes); break;
            }
        }

        return new ReceivedSpan(service, scope, traceId, spanId, parent, name, kind, attributes, traceState);
    }

    private static string ServiceName(ReadOnlyMemory<byte> resource)
    {
        var attributes = new Dictionary<string, string>();
        foreach (var field in Fields(resource).Where(f => f.Number == 1))
        {
            AddKeyValue(attributes, field.Bytes);
        }

        return attributes.GetValueOrDefault("service.name", "");
    }

    private static void AddKeyValue(Dictionary<string, string> into, ReadOnlyMemory<byte> keyValue)
    {
        string key = "", value = "";
        foreach (var field in Fields(keyValue))
        {
            if (field.Number == 1)
            {
                key = Text(field.Bytes);
            }
            else if (field.Number == 2)
            {
                value = AnyValue(field.Bytes);
            }
        }

        into[key] = value;
    }

    private static string AnyValue(ReadOnlyMemory<byte> anyValue)
    {
        foreach (var field in Fields(anyValue))
        {
            switch (field.Number)
            {
                case 1: return Text(field.Bytes);
                case 2: return field.Varint != 0 ? "true" : "false";
                case 3: return ((long)field.Varint).ToString(System.Globalization.CultureInfo.InvariantCulture);
                case 4: return BitConverter.Int64BitsToDouble((long)field.Varint).ToString(System.Globalization.CultureInfo.InvariantCulture);
            }
        }

        return "";
    }

    private static string Text(ReadOnlyMemory<byte> bytes) => Encoding.UTF8.GetString(bytes.Span);

    private readonly record struct Field(int Number, ulong Varint, ReadOnlyMemory<byte> Bytes);

    private static List<Field> Fields(ReadOnlyMemory<byte> message)
    {
        var fields = new List<Field>();
        var span = message.Span;
        var position = 0;
        while (position < span.Length)
        {
            var tag = ReadVarint(span, ref position);
            var number = (int)(tag >> 3);
            switch ((int)(tag & 7))
            {
                case 0:
                    fields.Add(new Field(number, ReadVarint(span, ref position), default));
                    break;
                case 1:
                    fields.Add(new Field(number, BitConverter.ToUInt64(span.Slice(position, 8)), default));
                    position += 8;
                    break;
                case 2:
                    var length = (int)ReadVarint(span, ref position);
                    fields.Add(new Field(number, 0, message.Slice(position, length)));
                    position += length;
                    break;
                case 5:
                    fields.Add(new Field(number, BitConverter.ToUInt32(span.Slice(position, 4)), default));
                    position += 4;
                    break;
                default:
                    throw new FormatException($"unsupported protobuf wire type in tag {tag}");
            }
        }

        return fields;
    }

    private static ulong ReadVarint(ReadOnlySpan<byte> span, ref int position)
    {
        ulong value = 0;
        for (var shift = 0; ; shift += 7)
        {
            var b = span[position++];
            value |= (ulong)(b & 0x7F) << shift;
            if ((b & 0x80) == 0)
            {
                return value;
            }
        }
    }
}
